"""Scale benchmark: the exporter's poll cycle at 1k, 10k and 100k repositories on 1 and 3 mirrors, and on 3 mirrors x
3 nodes read node by node, against the floor and the naive ways, in one run on one machine (bench/README.md
says what each figure means).

    python3 bench/scale.py                          # the full run, about 5 minutes; writes bench/results/
    python3 bench/scale.py --sizes 1000 --mirrors 1 --out /tmp/scale   # a quick look
    python3 bench/scale.py --sizes 100000 --mirrors 3 --nodes 1,3      # the nodes dimension alone
    python3 bench/scale.py --sizes 1000000 --mirrors 1 --nodes 1 --merge bench/results/scale.json   # one row added
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from bench.scale_report import machine, targets, write_results  # noqa: E402
from bench.scraping import PROMETHEUS_HEADERS, scrape_session, timed_scrape  # noqa: E402

PER_REPOSITORY_MAX = 10_000  # one call per repository is measured up to this size only (the issue asks 1k and 10k)
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND


class Farm:
    """bench/scale_farm.py in its own process; its CPU time is read around each client's run."""

    def __init__(
        self, repositories: int, mirrors: int, page_cap: int, drift: float, nodes: int = 1, changes: float = 0.0
    ) -> None:
        args = ["--repositories", str(repositories), "--mirrors", str(mirrors), "--page-cap", str(page_cap)]
        args += ["--nodes", str(nodes), "--changes-per-cycle", str(changes)]
        self.process = subprocess.Popen(
            [sys.executable, str(BENCH / "scale_farm.py"), *args, "--drift", str(drift)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # the farm's description once every listing is rendered
        if not line:
            raise RuntimeError("the simulated farm did not start")
        self.info: dict[str, Any] = json.loads(line)

    def measure(self, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run a client; add the simulator's CPU seconds per cycle the client ran."""
        before = cpu_seconds(self.process.pid)
        result = run()
        # The unmeasured first cycle too, and the exporter's cycles with the stall probe on.
        cycles = result.get("cycles", 1) + (1 if "cycles" in result else 0) + result.get("probe_cycles", 0)
        result["simulator_cpu_seconds"] = (cpu_seconds(self.process.pid) - before) / cycles
        return result

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def run_client(client: str, info: dict[str, Any], *extra: str) -> dict[str, Any]:
    command = [sys.executable, str(BENCH / "scale_clients.py"), client, "--farm", json.dumps(info), *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{client} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.splitlines()[-1]))


async def scrape_while(
    started: dict[str, Any], scrapers: int, period: float, running: asyncio.Event, finished: asyncio.Event
) -> list[float]:
    """``scrapers`` clients, each scraping /metrics every ``period`` seconds, all at the same instants (the worst
    case: a burst of simultaneous scrapes), until ``running`` is cleared. Returns latencies in seconds. Over TLS with
    basic auth when the exporter said so (``ca_file``): each scraper keeps its connection, as Prometheus does."""
    latencies: list[float] = []
    tls = "ca_file" in started
    url = f"{'https' if tls else 'http'}://127.0.0.1:{started['port']}/metrics"
    credentials = f"{started.get('username')}:{started.get('password')}".encode()
    headers = dict(PROMETHEUS_HEADERS)
    if tls:
        headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
    trust = ssl.create_default_context(cafile=started["ca_file"]) if tls else None

    async def scraper(http: aiohttp.ClientSession) -> None:
        # One scrape first, not timed: the connection (its TLS handshake) and the first check of the credentials
        # (bcrypt) are paid once per Prometheus server, not per scrape.
        await timed_scrape(http, url, headers)
        start = time.monotonic()
        tick = 0
        while running.is_set():
            try:
                latency = await timed_scrape(http, url, headers)
            except aiohttp.ClientConnectionError:
                # The exporter finishes its cycles, prints its figures and exits: a scrape on its way then finds the
                # port closed, perhaps before the figures' line is read here. Only a refusal that lasts is a failure.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(finished.wait(), 5)
                if running.is_set():
                    raise
                return
            latencies.append(latency)
            tick += 1
            await asyncio.sleep(max(0.0, start + tick * period - time.monotonic()))

    connector = aiohttp.TCPConnector(limit=0, ssl=trust if trust is not None else True)
    async with scrape_session(30, connector) as http:
        await asyncio.gather(*(scraper(http) for _ in range(scrapers)))
    return latencies


async def run_exporter(
    info: dict[str, Any], cycles: int, scrapers: int, period: float, web: str = "plain"
) -> dict[str, Any]:
    command = [sys.executable, str(BENCH / "scale_clients.py"), "exporter", "--farm", json.dumps(info)]
    child = await asyncio.create_subprocess_exec(
        *command, "--cycles", str(cycles), "--web", web, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None and child.stderr is not None
    async with asyncio.timeout(1800):
        started = json.loads(await child.stdout.readline())
        running, finished = asyncio.Event(), asyncio.Event()
        running.set()
        scraping = asyncio.create_task(scrape_while(started, scrapers, period, running, finished))
        line = await child.stdout.readline()
        running.clear()
        finished.set()
        latencies = await scraping
        errors = (await child.stderr.read()).decode()
        if await child.wait() != 0 or not line:
            raise RuntimeError(f"the exporter failed:\n{errors[-3000:]}")
    result: dict[str, Any] = json.loads(line)
    ordered = sorted(latencies)
    result["scrapes"] = {
        "count": len(ordered),
        "p50": statistics.median(ordered) if ordered else None,
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else None,
        "max": ordered[-1] if ordered else None,
    }
    return result


def bracketed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The floor measured before and after the exporter's runs, as one: the median wall and CPU seconds over both
    runs' cycles (each run's own medians kept beside them), the simulator's CPU per cycle the mean of the two."""
    walls = before["cycle_wall_seconds"] + after["cycle_wall_seconds"]
    cpus = before["cycle_cpu_seconds"] + after["cycle_cpu_seconds"]
    return {
        **before,
        "wall_seconds": statistics.median(walls),
        "cpu_seconds": statistics.median(cpus),
        "cycles": len(walls),
        "cycle_wall_seconds": walls,
        "cycle_cpu_seconds": cpus,
        "simulator_cpu_seconds": (before["simulator_cpu_seconds"] + after["simulator_cpu_seconds"]) / 2,
        "before": {"wall_seconds": before["wall_seconds"], "cpu_seconds": before["cpu_seconds"]},
        "after": {"wall_seconds": after["wall_seconds"], "cpu_seconds": after["cpu_seconds"]},
    }


def measure_size(repositories: int, mirrors: int, args: argparse.Namespace, nodes: int = 1) -> dict[str, Any]:
    """One row. With ``nodes`` above 1 each farm has that many nodes and the exporter (and the floor) read every node's
    listing at its own URL; the naive clients know no nodes and are not run."""
    farm = Farm(repositories, mirrors, args.page_cap, args.drift, nodes, args.changes_per_cycle)
    try:
        info = farm.info
        cycles = str(args.cycles)
        row: dict[str, Any] = {
            "repositories": repositories,
            "mirrors": mirrors,
            "nodes": nodes,
            "page_cap": args.page_cap,
            "drifting": info["drifting"],
            "changes_per_cycle": args.changes_per_cycle,
        }
        row["floor"] = farm.measure(lambda: run_client("floor", info, "--cycles", cycles))
        row["exporter"] = farm.measure(
            lambda: asyncio.run(run_exporter(info, args.cycles, args.scrapers, args.scrape_period))
        )
        if nodes > 1 or args.tls:
            # The same run with /metrics over TLS and basic auth: scrapes pay the handshake once per connection and
            # a remembered credential check per request.
            row["exporter_tls"] = farm.measure(
                lambda: asyncio.run(run_exporter(info, args.cycles, args.scrapers, args.scrape_period, "tls"))
            )
        # The floor again, after the exporter's runs: this machine's speed drifts over minutes (by up to 1.9x in one
        # session), and a floor measured only before the exporter carried that drift into every ratio.
        row["floor"] = bracketed(row["floor"], farm.measure(lambda: run_client("floor", info, "--cycles", cycles)))
        if nodes == 1:
            row["sync"] = farm.measure(lambda: run_client("sync", info))
        if nodes == 1 and repositories <= PER_REPOSITORY_MAX:
            row["per_repository"] = farm.measure(lambda: run_client("per-repo", info))
        # Last: it pushes, so the farm is no longer the one the other clients measured. An interval of about twice
        # the steady cycle, as an admin would choose; the bound is one interval plus the longest cycle of that run.
        interval = max(1.0, math.ceil(4 * row["exporter"]["wall_seconds"]) / 2)
        row["drift_found"] = run_client("drift-found", info, "--interval", str(interval), "--pushes", "3")
        return row
    finally:
        farm.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000", help="repository counts, comma-separated")
    parser.add_argument("--mirrors", default="1,3", help="mirror counts, comma-separated")
    parser.add_argument(
        "--nodes",
        default=None,
        help="nodes per farm, comma-separated; above 1 the exporter reads node by node (default: 1 for every size, "
        "and 3 too at the largest mirror count)",
    )
    parser.add_argument("--drift", type=float, default=0.01, help="share of repositories the mirrors lag on")
    parser.add_argument("--page-cap", type=int, default=100, help="the page size the simulated Bitbucket allows")
    parser.add_argument(
        "--changes-per-cycle",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share of repositories pushed on the primary between any two cycles (synced by the mirrors a cycle "
        "later), so steady cycles download pages that really change; 0: a quiet farm",
    )
    parser.add_argument("--cycles", type=int, default=3, help="steady cycles measured per client")
    parser.add_argument(
        "--tls", action="store_true", help="every row also over TLS with basic auth (default: the node-by-node rows)"
    )
    parser.add_argument("--scrapers", type=int, default=10)
    parser.add_argument("--scrape-period", type=float, default=1.0, help="seconds between one scraper's scrapes")
    parser.add_argument("--out", type=Path, default=BENCH / "results", help="where scale.md/.json/.png go")
    parser.add_argument(
        "--merge",
        type=Path,
        help="a scale.json whose rows are kept beside this run's (a 1M row measured alone); this run's rows replace "
        "any of the same size",
    )
    args = parser.parse_args()
    rows = json.loads(args.merge.read_text())["rows"] if args.merge else []
    sizes = [int(s) for s in args.sizes.split(",")]
    mirror_counts = [int(m) for m in args.mirrors.split(",")]
    for repositories in sizes:
        for mirrors in mirror_counts:
            # Node by node too at the largest mirror count, so the plot has a line for 1 and for 3 nodes.
            default_nodes = "1,3" if mirrors == max(mirror_counts) and mirrors > 1 else "1"
            for nodes in (int(n) for n in (args.nodes or default_nodes).split(",")):
                what = f"{repositories} repositories x {mirrors} mirrors x {nodes} nodes"
                print(f"measuring {what} ...", file=sys.stderr, flush=True)
                row = measure_size(repositories, mirrors, args, nodes)
                # A merged row of the same size gives way to this run's (the targets read the first row of a size).
                same = (repositories, mirrors, nodes)
                rows = [r for r in rows if (r["repositories"], r["mirrors"], r.get("nodes", 1)) != same] + [row]
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"}
    report = write_results(args.out, rows, machine(), settings)
    print(report)
    misses = [t for t in targets(rows) if not t["met"]]
    print(f"{len(misses)} target(s) missed" if misses else "every target met")


if __name__ == "__main__":
    main()
