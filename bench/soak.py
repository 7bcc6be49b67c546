"""Load and soak: the exporter as a process (the real CLI) polling the simulated farm, then

1. **load**: many scrapers (50 by default) fetching /metrics back to back for 30 s while polls run;
2. **soak**: at least 10 minutes of churn on the primary (repositories created, deleted and pushed every second,
   mirrors syncing them after a delay and dropping deleted copies), two scrapers once a second, the exporter's
   RSS sampled every 10 s.

Prints and writes bench/results/soak.{md,json}: scrape latency, errors, RSS over time (flat means the state of
deleted repositories is freed), and whether the exporter's view still matches the farm's truth at the end.

    python3 bench/soak.py                      # 30 s load + 10 min soak, about 11 min
    python3 bench/soak.py --minutes 1 --load-seconds 5 --scrapers 10 --repositories 200   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ready import wait_ready  # noqa: E402
from bench.scale_report import machine  # noqa: E402
from exporter.processes import descendants  # noqa: E402
from exporter.simulator import Scenario, SimulatedFarm  # noqa: E402
from exporter.simulator.farm import Farm  # noqa: E402

RESULTS = ROOT / "bench" / "results"
LOOPBACK = "127.0.0.1"


@dataclass
class Latencies:
    seconds: list[float] = field(default_factory=list)
    errors: int = 0

    def summary(self) -> dict[str, float | int]:
        ordered = sorted(self.seconds) or [0.0]
        return {
            "scrapes": len(self.seconds),
            "errors": self.errors,
            "p50_ms": round(1000 * statistics.median(ordered), 1),
            "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
            "max_ms": round(1000 * ordered[-1], 1),
        }


@dataclass
class Sample:
    at_seconds: float
    rss_mb: float
    series: int
    repositories: int


def rss_mb(pid: int) -> float:
    """The resident memory of the exporter and every process below it (its fork server and worker processes)."""
    total = 0.0
    for process in (pid, *descendants(pid)):
        try:
            lines = Path(f"/proc/{process}/status").read_text().splitlines()
        except OSError:  # ended meanwhile
            continue
        total += next((int(line.split()[1]) / 1024 for line in lines if line.startswith("VmRSS:")), 0.0)
    return total


async def scrape(http: aiohttp.ClientSession, url: str, into: Latencies) -> str:
    started = time.monotonic()
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise aiohttp.ClientError(f"HTTP {resp.status}")
    except (aiohttp.ClientError, TimeoutError):
        into.errors += 1
        return ""
    into.seconds.append(time.monotonic() - started)
    return text


async def scrapers(url: str, count: int, seconds: float, pause: float) -> Latencies:
    """``count`` scrapers for ``seconds``, each waiting ``pause`` between its scrapes (0: back to back)."""
    latencies = Latencies()
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=count)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one() -> None:
            while time.monotonic() < deadline:
                await scrape(http, url, latencies)
                await asyncio.sleep(pause)

        await asyncio.gather(*(one() for _ in range(count)))
    return latencies


def churn(farm: Farm, rng: random.Random, per_second: int) -> None:
    """One second of churn: repositories created, deleted and pushed on the primary."""
    for _ in range(per_second):
        farm.create(rng.randrange(len(farm.projects)))
    for repo_id in rng.sample(sorted(farm.repositories), per_second):
        farm.delete(repo_id)
    for repo_id in rng.sample(sorted(farm.repositories), per_second):
        farm.push(repo_id)


def sample(text: str, pid: int, started: float) -> Sample:
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    repositories = sum(
        int(float(line.rsplit(" ", 1)[1])) for line in lines if line.startswith("bitbucket_mirror_repositories{")
    )
    return Sample(round(time.monotonic() - started, 1), round(rss_mb(pid), 1), len(lines), repositories)


async def run(args: argparse.Namespace) -> dict[str, object]:
    scenario = Scenario(
        seed=7, projects=20, repositories=args.repositories, mirrors=2, sync_delay_seconds=3.0,
        metadata_sync_delay_seconds=5.0, failing_repositories=3, page_limit_cap=1000,
    )  # fmt: skip
    rng = random.Random(7)
    async with SimulatedFarm(scenario) as sim:
        workdir = Path(tempfile.mkdtemp(prefix="soak-"))
        config = workdir / "config.yml"
        config.write_text(yaml.safe_dump(sim.exporter_config(interval_seconds=args.interval)))
        log = (workdir / "exporter.log").open("w")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "exporter", "run", f"--config={config}",
            f"--web.listen-address={LOOPBACK}:{args.port}", "--log.level=warn", stderr=log, cwd=ROOT,
        )  # fmt: skip
        url = f"http://{LOOPBACK}:{args.port}"
        try:
            if not await wait_ready(url):
                raise SystemExit("the exporter did not become ready within 30 s")
            started = time.monotonic()
            rss_before_load = rss_mb(process.pid)
            print(f"load: {args.scrapers} scrapers back to back for {args.load_seconds:g} s ...", flush=True)
            load = await scrapers(url + "/metrics", args.scrapers, args.load_seconds, 0.0)
            rss_after_load = rss_mb(process.pid)
            print(f"  {load.summary()}; RSS {rss_before_load:.0f} -> {rss_after_load:.0f} MB", flush=True)

            print(f"soak: {args.minutes:g} min of churn ({args.churn} created/deleted/pushed per second) ...")
            samples: list[Sample] = []
            soak_started = time.monotonic()
            deadline = soak_started + 60 * args.minutes
            steady = asyncio.create_task(scrapers(url + "/metrics", 2, 60 * args.minutes, 1.0))
            async with aiohttp.ClientSession() as http:
                tick = 0
                while time.monotonic() < deadline:
                    churn(sim.farm, rng, args.churn)
                    tick += 1
                    if tick % 5 == 0:
                        for mirror in sim.farm.mirrors.values():
                            sim.farm.forget_deleted(mirror)
                    if tick % 10 == 0:
                        text = await scrape(http, url + "/metrics", Latencies())
                        samples.append(sample(text, process.pid, soak_started))
                        print(f"  {asdict(samples[-1])}", flush=True)
                    await asyncio.sleep(1.0)
            soak = await steady
            # Let the mirrors catch up and the exporter see it, then compare with the farm's truth.
            for mirror in sim.farm.mirrors.values():
                sim.farm.forget_deleted(mirror)
            await asyncio.sleep(scenario.metadata_sync_delay_seconds + 3 * args.interval)
            async with aiohttp.ClientSession() as http:
                final = await scrape(http, url + "/metrics", Latencies())
            poll_errors = sum(
                float(line.rsplit(" ", 1)[1])
                for line in final.splitlines()
                if line.startswith("bitbucket_mirror_exporter_poll_errors_total{")
            )
            expected = sum(len(m.repositories) for m in sim.farm.mirrors.values())
            end = sample(final, process.pid, soak_started)
        finally:
            process.terminate()
            await asyncio.wait_for(process.wait(), 10)
            log.close()
    rss = [s.rss_mb for s in samples]
    first = rss[: max(1, len(rss) // 5)]
    last = rss[-max(1, len(rss) // 5) :]
    growth = (statistics.median(last) - statistics.median(first)) / statistics.median(first) if rss else 0.0
    return {
        "machine": machine(),
        "settings": vars(args),
        "load": {
            **load.summary(),
            "rss_before_mb": round(rss_before_load, 1),
            "rss_after_mb": round(rss_after_load, 1),
            "scrapes_per_second": round(len(load.seconds) / args.load_seconds, 1),
        },
        "soak": {
            **soak.summary(),
            "rss_first_fifth_median_mb": round(statistics.median(first), 1) if rss else None,
            "rss_last_fifth_median_mb": round(statistics.median(last), 1) if rss else None,
            "rss_max_mb": max(rss) if rss else None,
            "rss_growth_percent": round(100 * growth, 1),
            "poll_errors": poll_errors,
            "repositories_on_mirrors_truth": expected,
            "repositories_on_mirrors_exported": end.repositories,
            "series_at_end": end.series,
            "repositories_created_per_second": args.churn,
        },
        "samples": [asdict(s) for s in samples],
        "took_seconds": round(time.monotonic() - started, 1),
    }


def report(result: dict[str, Any]) -> str:
    load, soak = result["load"], result["soak"]
    assert isinstance(load, dict) and isinstance(soak, dict)
    rows = "\n".join(f"| {s['at_seconds']:.0f} | {s['rss_mb']:.1f} | {s['series']} | {s['repositories']} |"
                     for s in result["samples"])  # fmt: skip
    return f"""# Load and soak (bench/soak.py)

Machine: {result["machine"]}. Settings: {result["settings"]}.

## Load: {result["settings"]["scrapers"]} scrapers back to back for {result["settings"]["load_seconds"]} s, polls running

| scrapes | scrapes/s | errors | p50 ms | p99 ms | max ms | RSS before -> after MB |
|---|---|---|---|---|---|---|
| {load["scrapes"]} | {load["scrapes_per_second"]} | {load["errors"]} | {load["p50_ms"]} | {load["p99_ms"]} | {load["max_ms"]} | {load["rss_before_mb"]} -> {load["rss_after_mb"]} |

## Soak: {result["settings"]["minutes"]} min of churn

Scrapes (2 scrapers, 1/s): {soak["scrapes"]}, errors {soak["errors"]}, p50 {soak["p50_ms"]} ms, p99 {soak["p99_ms"]} ms,
max {soak["max_ms"]} ms. Exporter poll errors: {soak["poll_errors"]:g}.

RSS (the exporter's and its worker processes', summed): first fifth median {soak["rss_first_fifth_median_mb"]} MB, last fifth median {soak["rss_last_fifth_median_mb"]}
MB ({soak["rss_growth_percent"]:+}%), max {soak["rss_max_mb"]} MB.

At the end: repositories on the mirrors {soak["repositories_on_mirrors_truth"]} (farm) vs
{soak["repositories_on_mirrors_exported"]} (exported); {soak["series_at_end"]} series.

| s | RSS MB | series | repositories (both mirrors) |
|---|---|---|---|
{rows}
"""  # noqa: E501


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--load-seconds", type=float, default=30.0)
    parser.add_argument("--scrapers", type=int, default=50)
    parser.add_argument("--repositories", type=int, default=2000)
    parser.add_argument("--churn", type=int, default=5, help="repositories created, deleted and pushed per second")
    parser.add_argument("--interval", type=float, default=2.0, help="the exporter's poll.interval_seconds")
    parser.add_argument("--port", type=int, default=19879)
    parser.add_argument("--out", type=Path, default=RESULTS / "soak", help="writes OUT.md and OUT.json")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    text = report(result)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
