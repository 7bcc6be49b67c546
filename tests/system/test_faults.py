"""Fault injection: one test per way a Bitbucket mirror can misbehave, against the simulated farm over loopback.

Every test runs the exporter with a known password (primary and frankfurt, from a password_file) and a known token
(sydney, from a token_file), breaks sydney, and checks the same promises: the exporter stays up and /metrics answers
at once; the failure is counted under its own ``reason`` and no other; ``bitbucket_mirror_up`` and the per-source
success gauges say the truth; the last good values stay, their timestamps showing their age; the exporter recovers
by itself when the fault heals; and neither secret appears in logs, /metrics, the landing page or error texts.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from exporter.logs import LogfmtFormatter
from exporter.secret_files import RECHECK_SECONDS
from exporter.simulator import Scenario, SimulatedFarm
from tests.conftest import LOOPBACK, Running, Samples, parse_metrics, running_farm, value, wait_until

PASSWORD = "Pa55-known-7f3c9e1d"
TOKEN = "BBDC-known-token-e1a2b3c4d5e6"
SECRETS = (
    PASSWORD,
    TOKEN,
    base64.b64encode(f"admin:{PASSWORD}".encode()).decode(),
)
FAULTY = "sydney"
HEALTHY = "frankfurt"
REPOSITORIES = 6
MIRROR_SOURCES = ("status", "upstream", "progress", "farm_nodes", "ref_changes_queue", "repo_sync_status")


@dataclass(frozen=True)
class Fault:
    """A simulator fault on sydney and what the exporter must make of it."""

    fault: str
    reason: str
    endpoint: str = "*"
    # Faulty answers before the fault heals by itself (a burst); None: the test heals it.
    budget: int | None = None
    poll: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return "status" if self.endpoint == "*" else self.endpoint

    @property
    def mirror_down(self) -> bool:
        return self.endpoint == "*"


SHORT_TIMEOUT = {"timeout_seconds": 0.5}
# Sources that fail with the whole mirror, whatever the fault (a tolerant model may accept a wrong shape elsewhere).
DOWN_SOURCES = ("status", "repo_sync_status")
# Enough faulty answers to fail every source of at least one whole poll, retries included.
BURST = 150

FAULTS = {
    "connection_reset": Fault("reset", "connection"),
    "http_500_burst": Fault("error", "http_500", budget=BURST),
    "http_502_burst": Fault("bad_gateway", "http_502", budget=BURST),
    "http_503_burst": Fault("unavailable", "http_503", budget=BURST),
    "http_429_retry_after": Fault("rate_limited", "http_429"),
    "http_401": Fault("unauthorized", "http_401"),
    "http_403": Fault("forbidden", "http_403"),
    "html_login_page_200": Fault("html", "html_response"),
    "malformed_json": Fault("broken_json", "invalid_json"),
    "truncated_json": Fault("truncated_json", "invalid_json"),
    "wrong_shape_json": Fault("wrong_shape", "invalid_response"),
    "page_loop": Fault("page_loop", "page_loop", endpoint="repo_sync_status"),
    "enormous_page": Fault(
        "enormous", "too_large", endpoint="repo_sync_status", poll={"max_response_bytes": 1024 * 1024}
    ),
    "slow_drip": Fault("slow_drip", "timeout", poll=SHORT_TIMEOUT),
    "read_timeout_mid_body": Fault("stall_mid_body", "timeout", poll=SHORT_TIMEOUT),
}


class HostsResolver(AbstractResolver):
    """Names from a table, like /etc/hosts; any other name fails as getaddrinfo fails for an unknown host. (The
    tests may not reach a real DNS server, so this stands in for the system resolver inside aiohttp's connector.)"""

    def __init__(self, hosts: dict[str, str]) -> None:
        self.hosts = hosts

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        address = self.hosts.get(host)
        if address is None:
            raise OSError(socket.EAI_NONAME, "Name or service not known")
        return [{"hostname": host, "host": address, "port": port, "family": socket.AF_INET, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        pass


@contextmanager
def blackhole(port: int) -> Iterator[None]:
    """A listener on ``port`` whose accept queue is full: the kernel drops new SYNs, so connecting hangs."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((LOOPBACK, port))
    listener.listen(0)
    filler = socket.create_connection((LOOPBACK, port), timeout=1)  # the one connection a backlog of 0 holds
    try:
        yield
    finally:
        filler.close()
        listener.close()


class CapturedLogs:
    """Every log line, at debug level, as the exporter prints it (logfmt) and with full tracebacks."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.logfmt = logging.StreamHandler(self.stream)
        self.logfmt.setFormatter(LogfmtFormatter())
        self.full = logging.StreamHandler(self.stream)
        self.full.setFormatter(logging.Formatter("%(message)s %(detail)s", defaults={"detail": ""}))

    @contextmanager
    def attached(self) -> Iterator[CapturedLogs]:
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.DEBUG)
        root.addHandler(self.logfmt)
        root.addHandler(self.full)
        try:
            yield self
        finally:
            root.removeHandler(self.logfmt)
            root.removeHandler(self.full)
            root.setLevel(level)

    @property
    def text(self) -> str:
        return self.stream.getvalue()


def _secret_config(tmp_path: Path, hostname: str | None = None) -> Any:
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")

    def prepare(farm: SimulatedFarm, config: dict[str, Any]) -> None:
        del config["primary"]["password"]
        config["primary"]["password_file"] = str(password_file)
        for mirror in config["mirrors"]:
            if mirror["name"] == FAULTY:
                mirror["token_file"] = str(token_file)
                if hostname is not None:
                    mirror["url"] = mirror["url"].replace(LOOPBACK, hostname)

    return prepare


@asynccontextmanager
async def secret_farm(
    tmp_path: Path, poll: dict[str, Any], hostname: str | None = None, resolver: AbstractResolver | None = None
) -> AsyncIterator[tuple[Running, CapturedLogs]]:
    scenario = Scenario(repositories=REPOSITORIES, password=PASSWORD, token=TOKEN)
    # Long enough for every fault here to ride over (docs/metrics.md, "Freshness"); tests/system/test_freshness.py
    # covers what happens past it.
    poll = {"retries": 1, "stale_after_seconds": 60, **poll}
    with CapturedLogs().attached() as logs:
        async with running_farm(
            scenario, ["9.x", "8.x"], prepare=_secret_config(tmp_path, hostname), resolver=resolver, **poll
        ) as run:
            yield run, logs


async def quick_metrics(run: Running) -> Samples:
    """/metrics must answer at once whatever Bitbucket does: a bound far below any Bitbucket timeout here."""
    async with run.http.get(run.url + "/metrics", timeout=aiohttp.ClientTimeout(total=2)) as resp:
        assert resp.status == 200
        return parse_metrics(await resp.text())


def reasons(samples: Samples, target: str, source: str) -> set[str]:
    return {
        dict(labels)["reason"]
        for (name, labels), count in samples.items()
        if name == "bitbucket_mirror_exporter_poll_errors_total"
        and dict(labels).get("target") == target
        and dict(labels).get("source") == source
        and count > 0
    }


def last_success(samples: Samples, target: str, source: str) -> float:
    stamp = value(samples, "bitbucket_mirror_exporter_last_success_timestamp_seconds", target=target, source=source)
    assert stamp is not None
    return stamp


async def assert_no_secret_anywhere(run: Running, logs: CapturedLogs) -> None:
    pages = {path: (await run.get(path))[1] for path in ("/metrics", "/", "/-/ready", "/-/healthy")}
    texts = {"logs": logs.text, **pages}
    for where, text in texts.items():
        for secret in SECRETS:
            assert secret not in text, f"a secret appears in {where}"


async def prove_fault_handled(
    run: Running, logs: CapturedLogs, fault: Fault, inject: Any, heal: Any, stale_sources: tuple[str, ...]
) -> None:
    """The shared body of every fault test: inject, check the promises while broken, heal, check recovery."""
    await run.wait_ready()
    await run.next_cycles(1)
    before = await quick_metrics(run)
    assert value(before, "bitbucket_mirror_up", mirror=FAULTY) == 1.0
    assert value(before, "bitbucket_mirror_repositories", mirror=FAULTY) == REPOSITORIES
    broken_at = time.time()
    await inject()

    async def counted() -> bool:
        samples = await quick_metrics(run)
        return fault.reason in reasons(samples, FAULTY, fault.source)

    await wait_until(counted, 20, f"{fault.reason} counted")
    broken = await quick_metrics(run)
    assert reasons(broken, FAULTY, fault.source) == {fault.reason}
    success = "bitbucket_mirror_exporter_poll_success"
    assert value(broken, success, target=FAULTY, source=fault.source) == 0.0
    assert value(broken, "bitbucket_mirror_up", mirror=FAULTY) == (0.0 if fault.mirror_down else 1.0)
    assert value(broken, "bitbucket_mirror_up", mirror=HEALTHY) == 1.0
    assert all(value(broken, success, target=HEALTHY, source=s) == 1.0 for s in MIRROR_SOURCES)
    assert value(broken, success, target="primary", source="repositories") == 1.0
    # The last good values stay, and their timestamps say how old they are: still while the healthy mirror's move.
    assert value(broken, "bitbucket_mirror_repositories", mirror=FAULTY) == REPOSITORIES
    later = broken

    async def healthy_moved_on() -> bool:
        nonlocal later
        later = await quick_metrics(run)
        return last_success(later, HEALTHY, "repo_sync_status") > last_success(broken, HEALTHY, "repo_sync_status")

    await wait_until(healthy_moved_on, 20, f"a newer poll of {HEALTHY}")
    for source in stale_sources:
        assert last_success(later, FAULTY, source) == last_success(broken, FAULTY, source)
    assert value(later, "bitbucket_mirror_repositories", mirror=FAULTY) == REPOSITORIES

    await heal()

    async def recovered() -> bool:
        samples = await quick_metrics(run)
        return (
            value(samples, success, target=FAULTY, source=fault.source) == 1.0
            and value(samples, "bitbucket_mirror_up", mirror=FAULTY) == 1.0
            and last_success(samples, FAULTY, fault.source) > broken_at
        )

    await wait_until(recovered, 20, f"{FAULTY} recovered from {fault.fault}")
    healed = await quick_metrics(run)
    assert value(healed, "bitbucket_mirror_repositories", mirror=FAULTY) == REPOSITORIES
    await assert_no_secret_anywhere(run, logs)


@pytest.mark.parametrize("case", FAULTS.values(), ids=FAULTS.keys())
async def test_fault(case: Fault, tmp_path: Path) -> None:
    async with secret_farm(tmp_path, case.poll) as (run, logs):
        change: dict[str, Any] = {"faults": {case.endpoint: case.fault}}
        if case.budget is not None:
            change["fault_budget"] = case.budget

        async def inject() -> None:
            await run.control(f"/sim/mirrors/{FAULTY}", change)

        async def heal() -> None:
            if case.budget is None:
                await run.control(f"/sim/mirrors/{FAULTY}", {"faults": {}})
            # A burst heals by itself.

        stale = DOWN_SOURCES if case.mirror_down else (case.source,)
        await prove_fault_handled(run, logs, case, inject, heal, stale)


async def test_fault_connect_timeout(tmp_path: Path) -> None:
    """The mirror's host stops accepting connections (a firewall dropping packets, a node gone)."""
    fault = Fault("blackhole", "connect_timeout")
    poll = {"timeout_seconds": 2.0, "connect_timeout_seconds": 0.3}
    async with secret_farm(tmp_path, poll) as (run, logs):
        port = 0
        stack = ExitStack()

        async def inject() -> None:
            nonlocal port
            port = await run.farm.stop_mirror(FAULTY)
            stack.enter_context(blackhole(port))

        async def heal() -> None:
            stack.close()
            await run.farm.start_mirror(FAULTY, port)

        try:
            await prove_fault_handled(run, logs, fault, inject, heal, DOWN_SOURCES)
        finally:
            stack.close()


async def test_fault_dns_failure(tmp_path: Path) -> None:
    """The mirror's name stops resolving (a deleted record, a broken resolver); it resolves again later."""
    hosts = {"sydney.mirror.test": LOOPBACK, HEALTHY: LOOPBACK}
    resolver = HostsResolver(hosts)
    fault = Fault("dns", "dns")
    async with secret_farm(tmp_path, {}, hostname="sydney.mirror.test", resolver=resolver) as (run, logs):
        port = 0

        async def inject() -> None:
            # Open connections would carry on without a lookup: take them away as a restart of the mirror would.
            nonlocal port
            del hosts["sydney.mirror.test"]
            port = await run.farm.stop_mirror(FAULTY)
            await run.farm.start_mirror(FAULTY, port)

        async def heal() -> None:
            hosts["sydney.mirror.test"] = LOOPBACK

        await prove_fault_handled(run, logs, fault, inject, heal, DOWN_SOURCES)


async def test_a_burst_shorter_than_the_retries_is_absorbed(tmp_path: Path) -> None:
    async with secret_farm(tmp_path, {}) as (run, _):
        await run.wait_ready()
        await run.control(f"/sim/mirrors/{FAULTY}", {"faults": {"status": "bad_gateway"}, "fault_budget": 1})
        await run.next_cycles(2)
        samples = await quick_metrics(run)
        assert reasons(samples, FAULTY, "status") == set()
        assert value(samples, "bitbucket_mirror_exporter_poll_success", target=FAULTY, source="status") == 1.0
        assert (await run.truth())["mirrors"][FAULTY]["faults"] == {}


async def test_429_is_not_retried_sooner_than_retry_after(tmp_path: Path) -> None:
    """Retry-After asks for 2 s, more than poll.max_backoff_seconds: one request per poll, not a retry storm."""
    async with secret_farm(tmp_path, {"retries": 3}) as (run, _):
        await run.wait_ready()

        async def sent() -> int:
            return int((await run.truth())["mirrors"][FAULTY]["requests"].get("status", 0))

        await run.control(f"/sim/mirrors/{FAULTY}", {"faults": {"status": "rate_limited"}})
        before = await sent()
        await run.next_cycles(3)
        polls = run.exporter.state.mirrors[0].status.errors_total["http_429"]
        assert polls >= 2
        assert await sent() - before <= polls + 1  # one in flight at most; retries 3 would have made it 4 per poll


async def test_rotated_password_and_token_files_apply_without_a_restart(tmp_path: Path) -> None:
    new_password, new_token = "Rotated-pa55-0a9b8c", "BBDC-rotated-token-77aa88"
    async with secret_farm(tmp_path, {}) as (run, logs):
        await run.wait_ready()
        # Bitbucket's credentials change first: the exporter, still on the old files, is refused.
        run.farm.scenario.password, run.farm.scenario.token = new_password, new_token
        sources = [("primary", "repositories"), (HEALTHY, "repo_sync_status"), (FAULTY, "repo_sync_status")]

        async def refused() -> bool:
            samples = await quick_metrics(run)
            # 401, or once 5 logins in a row failed, Bitbucket's CAPTCHA lock on the account (also a 401).
            return all(reasons(samples, target, source) & {"http_401", "captcha"} for target, source in sources)

        await wait_until(refused, 20, "the old credentials refused")
        (tmp_path / "password").write_text(new_password + "\n")
        (tmp_path / "token").write_text(new_token + "\n")
        rotated_at = time.time()
        # As on real Bitbucket, the refusals locked the account behind a CAPTCHA: the admin clears it once the
        # exporter has the new files (it looks at them once a second), or its old password would lock it again.
        await asyncio.sleep(RECHECK_SECONDS + 0.2)
        await run.control("/sim/accounts", {"clear_captcha": True})

        async def accepted() -> bool:
            samples = await quick_metrics(run)
            return all(last_success(samples, target, source) > rotated_at for target, source in sources)

        await wait_until(accepted, 20, "the rotated credentials accepted")
        for secret in (new_password, new_token):
            assert secret not in logs.text and secret not in (await run.get("/metrics"))[1]
