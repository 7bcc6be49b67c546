"""The exporter as a process: SIGHUP and POST /-/reload reload its configuration (keeping the old one, and saying
why, when the new one is invalid), and SIGTERM stops it cleanly within seconds, even with a poll hanging."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from exporter.processes import descendants
from exporter.simulator import Scenario, SimulatedFarm
from tests.conftest import LOOPBACK, Samples, parse_metrics, running_farm, value, wait_until

RELOADED = "bitbucket_mirror_exporter_config_last_reload_successful"
RELOADED_AT = "bitbucket_mirror_exporter_config_last_reload_success_timestamp_seconds"


class ExporterProcess:
    def __init__(self, process: asyncio.subprocess.Process, http: aiohttp.ClientSession) -> None:
        self.process = process
        self.http = http
        self.log: list[str] = []
        self.port = 0

    async def read_log(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            text = line.decode(errors="replace").rstrip()
            self.log.append(text)
            started = re.search(r'msg="exporter started".* address=[^ ]*:(\d+)', text)
            if started:
                self.port = int(started[1])

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def metrics(self) -> Samples:
        async with self.http.get(self.url + "/metrics", timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return parse_metrics(await resp.text())

    async def wait_ready(self) -> None:
        async def ready() -> bool:
            async with self.http.get(self.url + "/-/ready") as resp:
                return resp.status == 200

        await wait_until(ready, 30, "ready")

    async def post_reload(self) -> tuple[int, str]:
        async with self.http.post(self.url + "/-/reload", timeout=aiohttp.ClientTimeout(total=10)) as resp:
            return resp.status, await resp.text()


@asynccontextmanager
async def exporter_process(config: Path) -> AsyncIterator[ExporterProcess]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exporter", "run", f"--config={config}", f"--web.listen-address={LOOPBACK}:0",
        "--web.enable-lifecycle", stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with aiohttp.ClientSession() as http:
        running = ExporterProcess(process, http)
        reader = asyncio.create_task(running.read_log())
        try:

            async def listening() -> bool:
                return running.port > 0

            await wait_until(listening, 30, "the exporter listening")
            yield running
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await asyncio.wait_for(reader, 10)


def _write(path: Path, farm: SimulatedFarm, mirrors: list[str], **extra: Any) -> None:
    config = farm.exporter_config(interval_seconds=0.2, timeout_seconds=30.0)
    config["mirrors"] = [m for m in config["mirrors"] if m["name"] in mirrors]
    path.write_text(yaml.safe_dump({**config, **extra}))


async def test_sighup_and_post_reload_apply_a_valid_config_and_keep_the_old_on_an_invalid_one(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    async with SimulatedFarm(Scenario(repositories=4)) as farm:
        _write(config, farm, ["sydney", "frankfurt"])
        async with exporter_process(config) as exporter:
            latest: Samples = {}

            async def polled(*mirrors: str) -> bool:
                nonlocal latest
                latest = await exporter.metrics()
                return all(value(latest, "bitbucket_mirror_up", mirror=m) == 1.0 for m in mirrors)

            await wait_until(lambda: polled("sydney", "frankfurt"), 30, "both mirrors polled")
            assert value(latest, RELOADED) == 1.0
            started_at = value(latest, RELOADED_AT)
            assert started_at is not None

            # SIGHUP: frankfurt leaves the configuration, sydney keeps what the exporter knew.
            _write(config, farm, ["sydney"])
            exporter.process.send_signal(signal.SIGHUP)

            async def frankfurt_gone() -> bool:
                samples = await exporter.metrics()
                return (
                    value(samples, "bitbucket_mirror_up", mirror="frankfurt") is None
                    and (value(samples, RELOADED_AT) or 0) > started_at
                )

            await wait_until(frankfurt_gone, 20, "frankfurt gone after SIGHUP")

            async def sydney_listed() -> bool:
                # Polled every 0.2 s, a value is served 0.6 s (stale_after): on a loaded machine a rendering (at most
                # a second old) may fall between two of sydney's listings, so this is polled, not read once.
                samples = await exporter.metrics()
                return value(samples, "bitbucket_mirror_repositories", mirror="sydney") == 4

            await wait_until(sydney_listed, 10, "sydney's repositories after SIGHUP")

            # An invalid file: refused with the key named, the running configuration keeps polling.
            config.write_text(config.read_text() + "mirrorz: []\n")
            status, body = await exporter.post_reload()
            assert status == 500 and "mirrorz: unknown key" in body, body
            refused: Samples = {}

            async def gauge_says_refused() -> bool:
                nonlocal refused
                refused = await exporter.metrics()  # scrapes within 0.2 s share a rendering: poll, do not expect
                return value(refused, RELOADED) == 0.0

            await wait_until(gauge_says_refused, 5, "the reload gauge at 0")
            assert any("config reload failed" in line and "mirrorz" in line for line in exporter.log)
            since = value(refused, "bitbucket_mirror_exporter_last_success_timestamp_seconds",
                          target="sydney", source="status")  # fmt: skip
            assert since is not None

            async def still_polling() -> bool:
                samples = await exporter.metrics()
                stamp = value(samples, "bitbucket_mirror_exporter_last_success_timestamp_seconds",
                              target="sydney", source="status")  # fmt: skip
                return stamp is not None and stamp > since

            await wait_until(still_polling, 20, "the old configuration still polling")
            exporter.process.send_signal(signal.SIGHUP)  # the same invalid file by signal: refused and logged again

            async def refused_twice() -> bool:
                return sum("config reload failed" in line for line in exporter.log) == 2

            await wait_until(refused_twice, 10, "the SIGHUP reload refused too")
            assert value(await exporter.metrics(), RELOADED) == 0.0

            # Fixed: POST /-/reload brings frankfurt back.
            _write(config, farm, ["sydney", "frankfurt"])
            status, body = await exporter.post_reload()
            assert status == 200, body
            await wait_until(lambda: polled("sydney", "frankfurt"), 30, "frankfurt back")
            assert value(latest, RELOADED) == 1.0


async def test_sigterm_stops_within_seconds_even_with_a_poll_hanging(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    async with SimulatedFarm(Scenario(repositories=4)) as farm:
        _write(config, farm, ["sydney", "frankfurt"])
        async with exporter_process(config) as exporter:
            await exporter.wait_ready()
            # Every sydney request now hangs for 30 s (the poll timeout here): polls are in flight at SIGTERM.
            sydney = farm.farm.mirrors["sydney"]
            before = sum(sydney.requests.values())
            sydney.faults = {"*": "hang"}

            async def hanging() -> bool:
                return sum(sydney.requests.values()) > before

            await wait_until(hanging, 10, "a request hanging")
            sent = time.monotonic()
            exporter.process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(exporter.process.wait(), 10)
            assert code == 0, exporter.log[-5:]
            print(f"stopped {time.monotonic() - sent:.2f}s after SIGTERM")
        assert any('msg="exporter stopped"' in line for line in exporter.log)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_sigterm_ends_every_worker_process_even_a_stopped_one_and_leaves_no_child(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    async with SimulatedFarm(Scenario(repositories=4)) as farm:
        _write(config, farm, ["sydney", "frankfurt"])
        async with exporter_process(config) as exporter:
            await exporter.wait_ready()
            children = descendants(exporter.process.pid)
            # multiprocessing's resource tracker and at least one worker (the first cycle walked the listings in one).
            assert len(children) >= 2, children
            # A worker that cannot even take SIGTERM (stopped, as if hung in C): the exporter must kill it.
            worker = max(children)
            os.kill(worker, signal.SIGSTOP)
            sent = time.monotonic()
            exporter.process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(exporter.process.wait(), 10)
            stopped = time.monotonic() - sent
            assert code == 0, exporter.log[-5:]

            async def no_child_left() -> bool:
                return not any(alive(pid) for pid in children)

            await wait_until(no_child_left, 5, "no process of the exporter's left")
            print(f"exporter and its {len(children)} children gone {stopped:.2f}s after SIGTERM")
        assert any('msg="exporter stopped"' in line for line in exporter.log)


def node_reads(truth: dict[str, Any]) -> dict[str, int]:
    """Each node's listing requests so far."""
    return {
        name: node["requests"].get("repo_sync_status", 0)
        for mirror in truth["mirrors"].values()
        for name, node in mirror["per_node"].items()
    }


async def test_reload_over_http_is_off_without_the_flag_and_coalesced_with_it() -> None:
    from exporter.app import Settings
    from exporter.web.config import WebConfig

    loads: list[float] = []
    current: dict[str, Settings] = {}

    def loader() -> tuple[Settings, WebConfig]:
        loads.append(time.monotonic())
        return current["settings"], WebConfig()

    async with running_farm(Scenario(repositories=2), ["9.x"], loader=loader) as run:
        current["settings"] = run.exporter.settings
        async with run.http.post(run.url + "/-/reload") as resp:
            assert resp.status == 403 and "--web.enable-lifecycle" in await resp.text()
        assert loads == []  # without the flag, SIGHUP reloads (test_sighup_… above)

    interval = 1.0
    async with running_farm(
        Scenario(repositories=2), ["9.x"], loader=loader, lifecycle=True, http_reload_interval=interval
    ) as run:
        current["settings"] = run.exporter.settings
        started = time.monotonic()

        async def post() -> int:
            async with run.http.post(run.url + "/-/reload", timeout=aiohttp.ClientTimeout(total=10)) as resp:
                return resp.status

        # A flood: 30 at once, then one every 50 ms for 1.5 s. Every one is answered; reloads are one a second.
        statuses = list(await asyncio.gather(*(post() for _ in range(30))))
        later = []
        for _ in range(30):
            later.append(asyncio.create_task(post()))
            await asyncio.sleep(0.05)
        statuses += await asyncio.gather(*later)
        assert set(statuses) == {200}
        elapsed = time.monotonic() - started
        assert 2 <= len(loads) <= elapsed / interval + 1, (len(loads), elapsed)
        assert all(later - earlier >= interval * 0.95 for earlier, later in itertools.pairwise(loads)), loads


@pytest.mark.parametrize("nodes", [False, True], ids=["farm URL", "node by node"])
async def test_reloads_that_change_nothing_keep_every_targets_phase_and_add_no_cycles(nodes: bool) -> None:
    from exporter.app import Settings
    from exporter.web.config import WebConfig

    current: dict[str, Settings] = {}

    def loader() -> tuple[Settings, WebConfig]:
        return current["settings"], WebConfig()

    interval = 1.0
    scenario = Scenario(repositories=4)
    async with running_farm(scenario, ["9.x", "8.x"], loader=loader, interval=interval, nodes=nodes) as run:
        current["settings"] = run.exporter.settings
        await run.wait_ready()
        await run.next_cycles(2)
        truth = await run.truth()
        before = dict(truth["primary_requests"])
        node_listings = node_reads(truth)
        started = time.monotonic()
        for _ in range(20):  # 20 reloads in about a second
            assert await run.exporter.reload() == (True, "config reloaded")
            await asyncio.sleep(0.05)
        await asyncio.sleep(interval)
        elapsed = time.monotonic() - started
        after = (await run.truth())["primary_requests"]
        cycles = after["repos"] - before["repos"]
        # One listing request a cycle (4 repositories, one page): the cycles the time allows, not one per reload.
        assert cycles <= elapsed / interval + 1, (cycles, elapsed)
        assert after["mirror_servers"] - before["mirror_servers"] <= elapsed / interval + 1
        if nodes:  # every node's own listing too
            later = node_reads(await run.truth())
            assert all(later[n] - node_listings[n] <= elapsed / interval + 1 for n in later), (node_listings, later)
        # And the targets are still polled, on the same grid.
        await run.next_cycles(1, within=10)
