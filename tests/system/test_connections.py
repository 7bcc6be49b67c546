"""Connections are bounded, so memory is: idle keep-alive connections close, a capped number may be open at
once and idle ones do not stop a scrape, a trickled webhook body is dropped, running out of file descriptors pauses
accepting instead of spinning, and malformed requests are counted and logged once per change. Raw sockets on
127.0.0.1; an exporter process under a low descriptor limit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import sys
import time
from pathlib import Path

import aiohttp
import yaml

from exporter.app import Exporter, ListenAddress, settings_from_mapping
from tests.conftest import LOOPBACK, Samples, parse_metrics, running_farm, value, wait_until
from tests.system.test_webhook_abuse import SECRET, prepared

REFUSED = "bitbucket_mirror_exporter_http_requests_refused_total"
REPO = Path(__file__).resolve().parent.parent.parent


async def landing_page(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """``GET /`` on the connection, read to the end of its answer: served by aiohttp, which keeps it alive."""
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")).split(b":")[1])
    await asyncio.wait_for(reader.readexactly(length), 10)


def idle_connections(port: int, count: int) -> list[socket.socket]:
    opened = []
    for _ in range(count):
        opened.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    return opened


async def test_hundreds_of_idle_connections_do_not_stop_a_scrape_and_the_cap_refuses_the_rest() -> None:
    config = {"primary": {"url": "http://127.0.0.1:9"}, "poll": {"interval_seconds": 60}}
    exporter = Exporter(settings_from_mapping(config), ListenAddress(LOOPBACK, 0), max_connections=400)
    await exporter.start()
    held: list[socket.socket] = []
    try:
        held = await asyncio.to_thread(idle_connections, exporter.port, 300)
        async with aiohttp.ClientSession() as http:
            started = time.monotonic()
            async with http.get(f"http://{LOOPBACK}:{exporter.port}/metrics") as resp:
                assert resp.status == 200
            assert time.monotonic() - started < 5
            held += await asyncio.to_thread(idle_connections, exporter.port, 150)
            refusals = exporter._served.refusals

            async def over_the_cap() -> bool:
                return refusals.counts.get("too_many_connections", 0) >= 45  # 450 opened, 400 fit (give or take)

            await wait_until(over_the_cap, 15, "the connections over the cap closed at once")
            # Once idle ones go, a scrape gets through again, and shows the count.
            for sock in held[:200]:
                sock.close()
            samples: Samples = {}

            async def scraped() -> bool:
                nonlocal samples
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://{LOOPBACK}:{exporter.port}/metrics") as resp:
                        samples = parse_metrics(await resp.text()) if resp.status == 200 else {}
                return (value(samples, REFUSED, reason="too_many_connections") or 0) >= 45

            await wait_until(scraped, 15, "a scrape with the count, once idle connections went")
    finally:
        for sock in held:
            sock.close()
        await exporter.stop()


async def test_an_idle_keep_alive_connection_is_closed(tmp_path: Path) -> None:
    config = {"primary": {"url": "http://127.0.0.1:9"}, "poll": {"interval_seconds": 60}}
    exporter = Exporter(settings_from_mapping(config), ListenAddress(LOOPBACK, 0))
    exporter._served.keep_alive_seconds = 1.0  # 75 s in production; a second here
    await exporter.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", exporter.port)
        # The landing page: aiohttp keeps the connection alive afterwards.
        await landing_page(reader, writer)
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the exporter
        assert time.monotonic() - started < 5
        writer.close()
    finally:
        await exporter.stop()


async def test_a_trickled_webhook_body_is_dropped_and_malformed_requests_are_counted_and_logged_once(
    tmp_path: Path,
) -> None:
    from exporter.webhooks import receiver

    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    receiver_seconds = receiver.BODY_SECONDS
    receiver.BODY_SECONDS = 1.0  # 10 s in production
    try:
        async with running_farm(prepare=prepared(secret_file)) as run:
            await run.wait_ready()
            reader, writer = await asyncio.open_connection("127.0.0.1", run.exporter.port)
            writer.write(b"POST /webhooks/bitbucket HTTP/1.1\r\nHost: x\r\nX-Event-Key: repo:refs_changed\r\n"
                         b"Content-Length: 100\r\n\r\n{")  # fmt: skip
            await writer.drain()
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
            assert answer.startswith(b"HTTP/1.1 408")
            writer.close()
            handler = Recorder()
            logging.getLogger("exporter").addHandler(handler)
            try:
                for _ in range(50):
                    reader, writer = await asyncio.open_connection("127.0.0.1", run.exporter.port)
                    # Two lengths: the request-smuggling pattern, which aiohttp refuses with 400.
                    writer.write(
                        b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
                    )
                    await writer.drain()
                    assert (await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)).startswith(b"HTTP/1.")
                    writer.close()
            finally:
                logging.getLogger("exporter").removeHandler(handler)
            samples = await run.metrics_until(
                lambda s: value(s, REFUSED, reason="bad_http_message") == 50.0, "50 malformed requests counted"
            )
            assert value(samples, "bitbucket_mirror_webhook_requests_total", event="repo:refs_changed",
                         outcome="too_slow") == 1.0  # fmt: skip
            refusals = [r for r in handler.records if r.getMessage() == "http request refused"]
            assert len(refusals) == 1, [r.__dict__.get("reason") for r in refusals]
    finally:
        receiver.BODY_SECONDS = receiver_seconds


async def test_out_of_file_descriptors_pauses_accepting_instead_of_spinning(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({"primary": {"url": "http://127.0.0.1:9"}, "poll": {"interval_seconds": 60}}))

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exporter", "run", f"--config={config}", f"--web.listen-address={LOOPBACK}:0",
        stderr=asyncio.subprocess.PIPE, preexec_fn=low_limit, cwd=REPO,
    )  # fmt: skip
    assert process.stderr is not None
    lines: list[str] = []
    port = 0

    async def read() -> None:
        nonlocal port
        assert process.stderr is not None
        async for raw in process.stderr:
            line = raw.decode(errors="replace")
            lines.append(line)
            if "exporter started" in line:
                port = int(line.split("address=")[1].split()[0].rsplit(":", 1)[1])

    reader = asyncio.create_task(read())
    held: list[socket.socket] = []
    try:

        async def listening() -> bool:
            return port > 0

        await wait_until(listening, 30, "the exporter listening")
        # Far more connections than descriptors: the exporter runs out and must pause, not spin.
        held = await asyncio.to_thread(idle_connections, port, 120)
        before = cpu_seconds(process.pid)
        await asyncio.sleep(3)
        spent = cpu_seconds(process.pid) - before
        refused_lines = [line for line in lines if "http request refused" in line]
        assert spent < 1.0, f"{spent:.2f} s of CPU in 3 s"
        assert 1 <= len(refused_lines) <= 3, refused_lines[:5]
        for sock in held:
            sock.close()
        held = []

        async def scraped() -> bool:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(f"http://{LOOPBACK}:{port}/metrics", timeout=aiohttp.ClientTimeout(total=2)) as resp,
                ):
                    return resp.status == 200 and REFUSED in await resp.text()
            return False

        await wait_until(scraped, 15, "a scrape once descriptors are free again")
    finally:
        for sock in held:
            sock.close()
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)
        await asyncio.wait_for(reader, 10)


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 1/100 s


async def test_a_request_head_that_does_not_arrive_whole_is_dropped_first_or_later_on_a_connection() -> None:
    config = {"primary": {"url": "http://127.0.0.1:9"}, "poll": {"interval_seconds": 60}}
    exporter = Exporter(settings_from_mapping(config), ListenAddress(LOOPBACK, 0))
    exporter._served.head_seconds = 1.0  # 10 s in production
    await exporter.start()
    try:
        # The first request of a connection, trickled: a head without its end.
        reader, writer = await asyncio.open_connection("127.0.0.1", exporter.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        await writer.drain()
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 10) == b""
        assert 0.5 < time.monotonic() - started < 5
        writer.close()
        # A later request on a kept-alive connection (aiohttp's by then), trickled the same way.
        reader, writer = await asyncio.open_connection("127.0.0.1", exporter.port)
        await landing_page(reader, writer)
        writer.write(b"GET / HTTP/1.1\r\nHo")
        await writer.drain()
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 10) == b""
        assert 0.5 < time.monotonic() - started < 5
        writer.close()
        assert exporter._served.refusals.counts.get("head_timeout") == 2
    finally:
        await exporter.stop()
