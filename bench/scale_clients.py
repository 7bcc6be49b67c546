"""The clients bench/scale.py compares, each run in a process of its own against a farm from bench/scale_farm.py.

    exporter   the real exporter (exporter.app.Exporter): a cold first cycle, then a steady one
    floor      downloads exactly the pages of one steady exporter cycle, with the same concurrency, parsing nothing
    sync       the naive script: one blocking request at a time (requests), plain json, the same pages and comparison
    per-repo   the naive poller: one REST call per repository per target (the per-repository status endpoints)
    drift-found  the exporter polling on its own schedule (``--interval``): seconds from a push no mirror syncs until
               /metrics counts it on every mirror, for pushes early, midway and late in the interval

Each prints one JSON line with a steady cycle's wall and CPU seconds and its requests and response bytes per target
(the exporter prints ``{"port": ...}`` first, so bench/scale.py can scrape it while it works). The exporter and the
floor run a first cycle and then ``--cycles`` more on the same connection pool, and report the median of those (warm
connections, as every cycle after the first one is); the synchronous script reports its second cycle; per-repo runs
once.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import bcrypt
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.app import Exporter, ListenAddress, settings_from_mapping, settle_heap
from exporter.config import PollConfig
from exporter.drift import RepoState
from exporter.processes import descendants
from exporter.rest.poller import MirrorPoller
from exporter.web.config import WebConfig, load_web_config
from exporter.workers import main_module_by_name

if TYPE_CHECKING:
    import requests

REPOSITORY = Path(__file__).resolve().parent.parent
REST = "/rest/mirroring/latest"
POLL = PollConfig()
# The small mirror endpoints the exporter reads once per cycle on a 9.x mirror (exporter/rest/api.py, rest/poller.py).
MIRROR_SINGLES = (
    "/status",
    f"{REST}/upstreamServer",
    f"{REST}/progress",
    f"{REST}/farmNodes",
    f"{REST}/syncSettings",
    f"{REST}/supportInfo/refChangesQueue",
    f"{REST}/supportInfo/refChangesQueue/count",
    f"{REST}/mirrorRepos/delayed-sync?limit=100",
)


def host_of(url: str) -> str:
    parsed = URL(url)
    return f"{parsed.host}:{parsed.port}"


@dataclass
class Cycle:
    """One measured cycle: wall and CPU seconds of this process, requests and response bytes by host."""

    started: float = field(default_factory=time.perf_counter)
    cpu_started: float = field(default_factory=time.process_time)
    requests: dict[str, int] = field(default_factory=dict)
    response_bytes: dict[str, int] = field(default_factory=dict)

    def add(self, host: str, size: int) -> None:
        self.requests[host] = self.requests.get(host, 0) + 1
        self.response_bytes[host] = self.response_bytes.get(host, 0) + size

    def result(self, info: dict[str, Any], **extra: Any) -> dict[str, Any]:
        names = {host_of(info["primary"]): "primary", **{host_of(u): n for n, u in info["mirrors"].items()}}
        names |= {host_of(u): f"{m}/{n}" for m, nodes in info.get("nodes", {}).items() for n, u in nodes.items()}
        return {
            "wall_seconds": time.perf_counter() - self.started,
            "cpu_seconds": time.process_time() - self.cpu_started,
            "requests": {names[h]: n for h, n in self.requests.items()},
            "response_bytes": {names[h]: n for h, n in self.response_bytes.items()},
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            **extra,
        }


def basic_auth(info: dict[str, Any]) -> str:
    return "Basic " + base64.b64encode(f"{info['username']}:{info['password']}".encode()).decode()


def paged_urls(base: str, path: str, total: int, cap: int) -> list[str]:
    """The pages the exporter's client asks for: ``page_limit`` first, then the server's cap, ``start`` moving on."""
    pages = max(1, math.ceil(total / cap))
    return [f"{base}{path}?start={i * cap}&limit={POLL.page_limit if i == 0 else cap}" for i in range(pages)]


def cycle_chains(info: dict[str, Any]) -> list[list[str]]:
    """A steady cycle's requests as chains: pages of one listing one after another, chains side by side."""
    cap, n = info["page_cap"], info["repositories"]
    chains = [
        paged_urls(info["primary"], f"{REST}/mirrorServers", len(info["mirrors"]), cap),
        paged_urls(info["primary"], f"{REST}/repos", n, cap),
    ]
    for name, url in info["mirrors"].items():
        chains += [[url + path] for path in MIRROR_SINGLES]
        nodes = info.get("nodes", {}).get(name, {})
        # Node by node, the listing is read at each node (with its /status), not at the farm URL.
        for base in nodes.values() or [url]:
            chains.append(paged_urls(base, f"{REST}/supportInfo/repoSyncStatus", n, cap))
        chains += [[base + "/status"] for base in nodes.values()]
    return chains


# --- floor ---------------------------------------------------------------------------------------------------------


def median_cycle(cycles: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The last cycle's traffic (every steady cycle asks for the same pages) with the median wall and CPU time."""
    return {
        **cycles[-1],
        "wall_seconds": statistics.median(c["wall_seconds"] for c in cycles),
        "cpu_seconds": statistics.median(c["cpu_seconds"] for c in cycles),
        "cycles": len(cycles),
        **extra,
    }


async def floor(info: dict[str, Any], cycles: int) -> dict[str, Any]:
    headers = {"Accept": "application/json", "Authorization": basic_auth(info)}
    limits: dict[str, asyncio.Semaphore] = {}

    async def chain(urls: list[str], cycle: Cycle) -> None:
        for url in urls:
            host = host_of(url)
            async with (
                limits.setdefault(host, asyncio.Semaphore(POLL.concurrency_per_host)),
                http.get(url, headers=headers) as resp,
            ):
                cycle.add(host, len(await resp.read()))

    results = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        for _ in range(1 + cycles):
            cycle = Cycle()
            await asyncio.gather(*(chain(c, cycle) for c in cycle_chains(info)))
            results.append(cycle.result(info))
    steady = results[1:]
    # Each cycle's figures too: scale.py takes the median over this run and one after the exporter's (``bracketed``).
    walls, cpus = [c["wall_seconds"] for c in steady], [c["cpu_seconds"] for c in steady]
    return median_cycle(steady, cycle_wall_seconds=walls, cycle_cpu_seconds=cpus)


# --- the synchronous script ----------------------------------------------------------------------------------------


def sync_cycle(info: dict[str, Any], http: requests.Session) -> tuple[Cycle, dict[str, int]]:
    cycle = Cycle()

    def get(url: str, params: dict[str, int] | None = None) -> Any:
        resp = http.get(url, params=params, timeout=120)
        resp.raise_for_status()
        cycle.add(host_of(url), len(resp.content))
        return json.loads(resp.content)

    def pages(url: str) -> Iterator[dict[str, Any]]:
        start, limit = 0, POLL.page_limit
        while True:
            page = get(url, {"start": start, "limit": limit})
            yield from page["values"]
            if page["isLastPage"]:
                return
            start, limit = page["nextPageStart"], page["limit"]

    primary = info["primary"] + REST
    hashes = {str(r["id"]): r["properties"]["contentHash"] for r in pages(f"{primary}/repos")}
    list(pages(f"{primary}/mirrorServers"))
    drifting = {}
    for name, url in info["mirrors"].items():
        for path in MIRROR_SINGLES:
            get(url + path)
        rows = {r["externalRepoId"]: r["hashes"]["content"] for r in pages(f"{url}{REST}/supportInfo/repoSyncStatus")}
        drifting[name] = sum(1 for repo_id, content in hashes.items() if rows.get(repo_id) != content)
    return cycle, drifting


def sync(info: dict[str, Any]) -> dict[str, Any]:
    # Imported here: only this client uses it, and loaded in every client it was about 5 MB of the exporter's
    # measured memory (with urllib3, charset_normalizer and certifi) that the exporter never carries.
    import requests

    with requests.Session() as http:
        http.headers.update({"Accept": "application/json", "Authorization": basic_auth(info)})
        for _ in range(2):
            cycle, drifting = sync_cycle(info, http)
    return cycle.result(info, drifting=drifting)


# --- one call per repository ---------------------------------------------------------------------------------------


def per_repository_urls(info: dict[str, Any]) -> list[str]:
    """Repository ids, project keys and slugs as the simulator creates them (given, not fetched: generous to it)."""
    urls = []
    for repo_id in range(1, info["repositories"] + 1):
        key, slug = f"PRJ{(repo_id - 1) % info['projects'] + 1}", f"repo-{repo_id}"
        urls.append(f"{info['primary']}{REST}/repos/{repo_id}")
        for url in info["mirrors"].values():
            urls.append(f"{url}{REST}/supportInfo/projects/{key}/repos/{slug}/repoSyncStatus")
    return urls


async def per_repository(info: dict[str, Any]) -> dict[str, Any]:
    headers = {"Accept": "application/json", "Authorization": basic_auth(info)}
    queues: dict[str, asyncio.Queue[str]] = {}
    for url in per_repository_urls(info):
        queues.setdefault(host_of(url), asyncio.Queue()).put_nowait(url)
    cycle = Cycle()

    async def worker(queue: asyncio.Queue[str]) -> None:
        while not queue.empty():
            url = queue.get_nowait()
            async with http.get(url, headers=headers) as resp:
                body = await resp.read()
                resp.raise_for_status()
            json.loads(body)
            cycle.add(host_of(url), len(body))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        await asyncio.gather(*(worker(q) for q in queues.values() for _ in range(POLL.concurrency_per_host)))
    return cycle.result(info)


# --- the exporter --------------------------------------------------------------------------------------------------


async def first_cycle(app: Exporter) -> None:
    while not app.state.ready:  # noqa: ASYNC110 (the exporter's state has no event to wait on)
        await asyncio.sleep(0.005)


def exporter_config(info: dict[str, Any], interval: float) -> dict[str, Any]:
    # farmNodes gives each node's address and cluster port; the nodes share one HTTP port, as on a real farm.
    node_template = f"http://{{address}}:{info.get('node_http_port', 0)}"
    return {
        "primary": {"url": info["primary"], "username": info["username"], "password": info["password"]},
        "mirrors": [
            {
                "name": name,
                "url": url,
                **({"nodes": {"url_template": node_template}} if info.get("nodes") else {}),
            }
            for name, url in info["mirrors"].items()
        ],
        "poll": {"interval_seconds": interval, "timeout_seconds": 120},
    }


TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
# The stall probe's step: a 1 ms sleep, so its lateness is how long the event loop was held (by a callback, or by
# another thread holding the GIL) when it should have run.
PROBE_SECONDS = 0.001


def process_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:  # gone
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND


def rss_bytes(pid: int) -> int:
    """Resident set size from the kernel's counters (/proc/PID/statm): no walk of the page tables, unlike PSS."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return 0


PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
# The sampler reads the summed RSS this often, and the summed PSS only when that RSS has risen by more than
# PSS_RISE_BYTES since the last PSS reading, at most every PSS_MIN_GAP_SECONDS (see ``Instruments``).
RSS_PERIOD_SECONDS = 0.1
PSS_RISE_BYTES = 1 << 20
PSS_MIN_GAP_SECONDS = 0.2


def pss_bytes(pid: int) -> int:
    """Proportional set size: shared pages (the fork server's preloaded modules) split between the sharers."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Instruments:
    """What the exporter costs beyond its own process, and how long its event loop is ever held: the workers' CPU,
    the peak of the summed PSS of the exporter and every process below it, and the lateness of a 1 ms sleep on the
    loop, with the CPU time the loop's thread ran meanwhile (the loop's own hold; the rest of a stall is waiting for a
    core). The sleep wakes the loop a thousand times a second, which cost the loop's thread 0.7-1.0 s of CPU in a
    cycle of 10 s (100k x 3 x 3 at 1%, measured with and without it): it runs only over cycles of its own (``probe``),
    after the cycles whose CPU is measured.

    PSS is read only when the summed RSS (the kernel's counters, cheap) has risen by more than a MiB since the last
    reading. Reading smaps_rollup walks a process's page tables under its memory-map lock, about 4 ms a process at
    100k x 3 x 3: read every 0.2 s it cost 0.23-0.33 s of CPU a 1% cycle, on a machine of two cores the exporter
    shares with the simulator, now 0.06-0.08 s (about 45 readings in a run instead of about 300), with the same peaks
    (344-354 MB against 346-351, runs alternated; no change in the scrapes' tail measured: bench/README.md). Shared
    pages (libraries) are about constant, so PSS peaks where RSS does; a peak of RSS higher than the one at the
    highest PSS reading (a rise within the readings' 0.2 s gap, gone by the next) is reported beside it
    (``pss_unread_rss_bytes``: 0.4-0.5 MB in those runs)."""

    def __init__(self) -> None:
        # None until the sampler's first reading (a run shorter than its period has none: unknown, not 0 bytes).
        self.peak_pss: int | None = None
        self.peak_rss = 0
        self.rss_at_peak_pss = 0
        self.pss_readings = 0
        self.rss_samples = 0
        # The sampler thread's own CPU seconds (left out of the exporter's).
        self.sampler_cpu = 0.0
        self.stalls: list[float] = []
        self.busy: list[float] = []
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._probe: asyncio.Task[None] | None = None
        self.measuring = False

    def _sample(self) -> None:
        me = os.getpid()
        rss_at_reading, read_at = 0, -math.inf
        while not self._stop.wait(RSS_PERIOD_SECONDS):
            began = time.thread_time()
            processes = (me, *descendants(me))
            rss = sum(rss_bytes(p) for p in processes)
            self.peak_rss = max(self.peak_rss, rss)
            self.rss_samples += 1
            if rss > rss_at_reading + PSS_RISE_BYTES and time.monotonic() - read_at >= PSS_MIN_GAP_SECONDS:
                summed = sum(pss_bytes(p) for p in processes)
                rss_at_reading, read_at = rss, time.monotonic()
                self.pss_readings += 1
                if self.peak_pss is None or summed > self.peak_pss:
                    self.peak_pss, self.rss_at_peak_pss = summed, rss
            # The instrument's cost, not the exporter's: on this thread, in the exporter's process, counted apart.
            self.sampler_cpu += time.thread_time() - began

    async def _stall_probe(self) -> None:
        while True:
            began, busy_from = time.perf_counter(), time.thread_time()
            await asyncio.sleep(PROBE_SECONDS)
            if self.measuring:
                # The lateness, and how much of it the loop's thread spent running (its own work: callbacks, the
                # garbage collector); the rest it waited for a core the other processes held.
                self.stalls.append(time.perf_counter() - began - PROBE_SECONDS)
                self.busy.append(time.thread_time() - busy_from)

    def start(self) -> None:
        self._sampler.start()

    def probe(self) -> None:
        """Stalls measured from now on."""
        self.measuring = True
        self._probe = asyncio.create_task(self._stall_probe())

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._probe is not None:
            self._probe.cancel()
        ordered = sorted(self.stalls)
        return {
            "peak_pss_bytes": self.peak_pss,
            "pss_readings": self.pss_readings,
            "peak_summed_rss_bytes": self.peak_rss,
            "pss_unread_rss_bytes": self.peak_rss - self.rss_at_peak_pss if self.peak_pss is not None else None,
            "loop_stall_max_ms": 1000 * ordered[-1] if ordered else None,
            "loop_stall_p99_ms": 1000 * ordered[int(len(ordered) * 0.99)] if ordered else None,
            "loop_stalls_over_20ms": sum(1 for s in ordered if s > 0.020),
            "loop_busy_max_ms": 1000 * max(self.busy) if self.busy else None,
            "loop_busy_over_20ms": sum(1 for b in self.busy if b > 0.020),
        }


def workers_cpu_seconds(app: Exporter) -> float:
    return sum(process_cpu_seconds(pid) for pid in app.workers.pids())


async def exporter(info: dict[str, Any], cycles: int, limit_seconds: float, web: str) -> dict[str, Any]:
    # One scheduled cycle, then the ones this run triggers: nothing else polls while they are measured.
    web_config, scraping = bench_web_config(web)
    app = Exporter(
        settings_from_mapping(exporter_config(info, 86400)), ListenAddress("127.0.0.1", 0), web_config=web_config
    )
    instruments = Instruments()
    cold = Cycle()
    await app.start()
    settle_heap()  # as the command line does once the exporter has started
    instruments.start()
    print(json.dumps({"port": app.port, **scraping}), flush=True)
    assert app.client is not None
    async with asyncio.timeout(limit_seconds):
        await first_cycle(app)
    cold_wall = time.perf_counter() - cold.started
    steady = []
    cold_lookups = app.push_lookups
    for _ in range(cycles):
        before_requests, before_bytes = dict(app.client.stats.requests), dict(app.client.stats.response_bytes)
        before_lookups = app.push_lookups
        before_workers = workers_cpu_seconds(app)
        before_sampler = instruments.sampler_cpu
        cycle = Cycle()
        await app.poll_once()
        for host, count in app.client.stats.requests.items():
            cycle.requests[host] = count - before_requests.get(host, 0)
            cycle.response_bytes[host] = app.client.stats.response_bytes[host] - before_bytes.get(host, 0)
        result = cycle.result(info, push_lookups=app.push_lookups - before_lookups)
        # A worker restarted meanwhile would count from 0: its CPU is then left out rather than made negative.
        result["sampler_cpu_seconds"] = instruments.sampler_cpu - before_sampler
        result["cpu_seconds"] -= result["sampler_cpu_seconds"]
        result["exporter_process_cpu_seconds"] = result["cpu_seconds"]
        result["worker_cpu_seconds"] = max(0.0, workers_cpu_seconds(app) - before_workers)
        result["cpu_seconds"] += result["worker_cpu_seconds"]
        steady.append(result)
    # As many cycles again with the stall probe on: the loop's stalls while cycles run (the /metrics scrapes go on
    # all through both).
    instruments.probe()
    for _ in range(cycles):
        await app.poll_once()
    instruments.measuring = False
    result = median_cycle(steady, cold_wall_seconds=cold_wall, cold_push_lookups=cold_lookups)
    for part in ("exporter_process_cpu_seconds", "worker_cpu_seconds", "sampler_cpu_seconds"):
        result[part] = statistics.median(c[part] for c in steady)
    result["probe_cycles"] = cycles
    result["workers"] = app.workers.size
    result["worker_restarts"] = app.workers.restarts
    result["push_lookups_per_cycle"] = [c["push_lookups"] for c in steady]
    # Rendered here rather than scraped: a scrape may share the rendering of the scrapers' latest burst.
    exposition = generate_latest(app.registry).decode()
    samples = [line for line in exposition.splitlines() if line and not line.startswith("#")]
    result["series"] = len(samples)
    result["repository_series"] = sum(1 for s in samples if s.startswith("bitbucket_mirror_repository_"))
    result["drifting"] = {
        m.name: m.drift.count(RepoState.CONTENT_DRIFT) if m.drift is not None else None for m in app.state.mirrors
    }
    await app.stop()
    result |= instruments.stop()
    return result


def bench_web_config(web: str) -> tuple[WebConfig | None, dict[str, Any]]:
    """``plain``: no web config. ``tls``: TLS with a certificate of a throwaway authority and basic auth (bcrypt cost
    10, as an admin's hash would be); what a scraper needs is printed beside the port."""
    if web == "plain":
        return None, {}
    directory = Path(tempfile.mkdtemp(prefix="bench-web-"))
    # Issued by a process of its own: ``cryptography`` loaded here adds about 11 MB to the exporter's measured memory,
    # which the exporter never imports (until session 19 it was, in every row: the TLS row's PSS was 6-12 MB above
    # the plain row's, and both carried part of it).
    command = [sys.executable, "-m", "tests.certs", str(directory)]
    issued = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, check=True)
    pki = json.loads(issued.stdout)
    password = "bench-scrape-password"
    document = {
        "tls_server_config": {"cert_file": pki["cert"], "key_file": pki["key"]},
        "basic_auth_users": {"prometheus": bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()},
    }
    path = directory / "web.yml"
    path.write_text(yaml.safe_dump(document))
    return load_web_config(path), {"ca_file": pki["ca_file"], "username": "prometheus", "password": password}


# --- how soon drift shows ------------------------------------------------------------------------------------------


async def content_drift(http: aiohttp.ClientSession, port: int) -> dict[str, float]:
    """Each mirror's count of repositories with content drift, as a scrape of /metrics shows it."""
    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    return {
        sample.labels["mirror"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "bitbucket_mirror_repositories_out_of_sync"
        for sample in family.samples
        if sample.labels.get("hash") == "content"
    }


async def drift_found(info: dict[str, Any], interval: float, pushes: int, limit_seconds: float) -> dict[str, Any]:
    """The exporter polling every ``interval`` seconds; a push on the primary that no mirror ever syncs, at a few
    moments of the interval: seconds from the push until every mirror's latest drift report holds the repository and
    a scrape of /metrics has shown that report."""
    # The bound is one interval plus the cycle that finds the push, timed here: a push makes the simulator build its
    # listings again and the exporter date the new divergence, so that cycle is longer than a steady one.
    cycles: list[float] = []
    steady_poll = MirrorPoller.poll_once

    async def timed_poll(poller: MirrorPoller) -> None:
        started = time.monotonic()
        try:
            await steady_poll(poller)
        finally:
            cycles.append(time.monotonic() - started)

    MirrorPoller.poll_once = timed_poll  # type: ignore[method-assign,assignment]
    app = Exporter(settings_from_mapping(exporter_config(info, interval)), ListenAddress("127.0.0.1", 0))
    await app.start()
    delays = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            async with asyncio.timeout(limit_seconds):
                await first_cycle(app)
                for i, repo_id in enumerate(info["in_step"][:pushes]):
                    # Pushes land early, midway and late in a cycle's interval: the worst is just after a read.
                    await asyncio.sleep(interval * (0.2 + 0.6 * i / max(1, pushes - 1)))
                    # Every mirror's drift on /metrics first (bounded): ready says every target was polled once,
                    # not that every comparison has landed; and at an interval this short the cycle after a push
                    # (the simulator building every listing again) outlasts poll.stale_after, so drift is absent
                    # (stale) until the next cycle ends.
                    before: dict[str, float] = {}
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(3 * interval + 120):
                            while sorted(before := await content_drift(http, app.port)) != sorted(info["mirrors"]):  # noqa: ASYNC110
                                await asyncio.sleep(0.2)
                    if sorted(before) != sorted(info["mirrors"]):
                        raise RuntimeError(f"/metrics shows content drift for {sorted(before)}, not every mirror")
                    pushed = time.monotonic()
                    async with http.post(f"{info['primary']}/sim/push", json={"repository_ids": [repo_id]}) as r:
                        r.raise_for_status()
                    async with asyncio.timeout(3 * interval + 120):
                        # Judged by the repository itself in every mirror's latest report, not by a count going up
                        # by one: with --changes-per-cycle the counts move by a whole batch between two reads.
                        while True:
                            if all(
                                mirror.drift is not None and str(repo_id) in mirror.drift.diverged_since
                                for mirror in app.state.mirrors
                            ):
                                break
                            await asyncio.sleep(0.05)
                        # On /metrics once a rendering made after the reports landed is served (within a second:
                        # exporter/web/exposition.py); a scrape then shows them.
                        landed = time.monotonic()
                        while not app.rendered_since(landed):  # noqa: ASYNC110 (nothing to wait on but the clock)
                            await asyncio.sleep(0.01)
                        await content_drift(http, app.port)
                    delays.append(time.monotonic() - pushed)
    finally:
        await app.stop()
        MirrorPoller.poll_once = steady_poll  # type: ignore[method-assign]
    longest = max(cycles[len(info["mirrors"]) :], default=0.0)  # the cold cycles apart
    return {
        "interval_seconds": interval,
        "delays_seconds": delays,
        "max_seconds": max(delays),
        "longest_cycle_seconds": longest,
        "bound_seconds": interval + longest,
    }


def main() -> None:
    main_module_by_name()  # the exporter's workers import none of this script
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("client", choices=("exporter", "floor", "sync", "per-repo", "drift-found"))
    parser.add_argument("--farm", required=True, help="the JSON line bench/scale_farm.py printed")
    parser.add_argument(
        "--cycles", type=int, default=3, help="steady cycles measured after the first (exporter, floor)"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds the exporter's first cycle may take")
    parser.add_argument("--interval", type=float, default=5.0, help="drift-found: the exporter's poll interval")
    parser.add_argument("--pushes", type=int, default=3, help="drift-found: pushes timed")
    parser.add_argument(
        "--web", choices=("plain", "tls"), default="plain", help="exporter: plain HTTP, or TLS with basic auth"
    )
    args = parser.parse_args()
    info = json.loads(args.farm)
    if args.client == "exporter":
        result = asyncio.run(exporter(info, args.cycles, args.timeout, args.web))
    elif args.client == "drift-found":
        result = asyncio.run(drift_found(info, args.interval, args.pushes, args.timeout))
    elif args.client == "floor":
        result = asyncio.run(floor(info, args.cycles))
    elif args.client == "per-repo":
        result = asyncio.run(per_repository(info))
    else:
        result = sync(info)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
