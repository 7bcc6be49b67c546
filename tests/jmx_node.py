"""A real JVM serving Bitbucket-shaped timer MBeans over JMX on 127.0.0.1 (tests/jmx/FakeMirrorNode.java), and a
JMX endpoint that accepts connections and never answers."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import astuple, dataclass
from pathlib import Path

from tests.tools import binary

SOURCE = Path(__file__).parent / "jmx" / "FakeMirrorNode.java"
INCREMENTAL = "com.atlassian.bitbucket.mirroring:type=Sync,name=IncrementalSyncTime"
SNAPSHOT = "com.atlassian.bitbucket.mirroring:type=Sync,name=SnapshotSyncTime"
FARM_VET = "com.atlassian.bitbucket.mirroring:type=FarmVet,name=FarmVetTime"
TICKETS = "com.atlassian.bitbucket:type=Tickets,name=scm-hosting"


def java_tool(name: str) -> str:
    return binary(name, "default-jdk-headless")


def compile_fake_node(into: Path) -> Path:
    subprocess.run([java_tool("javac"), "-d", str(into), str(SOURCE)], check=True, timeout=120)
    return into


@dataclass(frozen=True)
class Timer:
    """A timer's values in its own DurationUnit, in the order FakeMirrorNode's ``timer`` command takes them."""

    duration_unit: str = "milliseconds"
    rate_unit: str = "events/second"
    count: int = 42
    mean: float = 120.5
    stddev: float = 10.0
    p50: float = 100.0
    p75: float = 110.0
    p95: float = 150.0
    p98: float = 160.0
    p99: float = 170.0
    p999: float = 200.0
    max: float = 250.0
    min: float = 20.0
    one_minute_rate: float = 0.5
    mean_rate: float = 0.2
    five_minute_rate: float = 0.3
    fifteen_minute_rate: float = 0.4


class FakeNode:
    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port

    @property
    def url(self) -> str:
        return f"service:jmx:rmi:///jndi/rmi://127.0.0.1:{self.port}/jmxrmi"

    async def command(self, line: str) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()
        answer = (await asyncio.wait_for(self.process.stdout.readline(), 10)).decode().strip()
        assert answer == "OK", f"{line!r}: {answer}"

    async def timer(self, object_name: str, timer: Timer) -> None:
        await self.command(" ".join(["timer", object_name, *(str(v) for v in astuple(timer))]))

    async def gauge(self, object_name: str, **values: int) -> None:
        await self.command(" ".join(["gauge", object_name, *(f"{k}={v}" for k, v in values.items())]))


@asynccontextmanager
async def fake_node(classes: Path, auth: tuple[str, str] | None = None) -> AsyncIterator[FakeNode]:
    args = ["-cp", str(classes), "-Xmx64m", "FakeMirrorNode"]
    if auth is not None:
        args += ["--auth", f"{auth[0]}:{auth[1]}"]
    process = await asyncio.create_subprocess_exec(
        java_tool("java"), *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        ready = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().split()
        assert ready[:1] == ["READY"], f"FakeMirrorNode did not start: {ready}"
        yield FakeNode(process, int(ready[1]))
    finally:
        if process.returncode is None:
            process.kill()
        await asyncio.wait_for(process.wait(), 10)


@asynccontextmanager
async def silent_endpoint() -> AsyncIterator[int]:
    """A TCP port that accepts connections and never answers: a JMX client waits on it forever."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in held:
            writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)


def alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running (not yet reaped)."""
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def jmxquery_processes_for(url: str) -> list[int]:
    """Pids of the exporter's jmxquery JVMs asking ``url``: their arguments are in an @file (exporter/jmx/query.py),
    which exists while they run."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            for argument in cmdline.read_bytes().decode(errors="replace").split("\0"):
                if argument.startswith("@") and "/bme-jmx-" in argument and url in Path(argument[1:]).read_text():
                    pids.append(int(cmdline.parent.name))
    return pids


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (this machine's /proc)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if text.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
    return pids
