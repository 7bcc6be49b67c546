"""Real Prometheus and Alertmanager processes on 127.0.0.1 for end-to-end tests, and a webhook receiver.

Each process runs in its own process group and is killed (with its group) when the context exits, also on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.tools import binary

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def _wait_ready(url: str, process: asyncio.subprocess.Process, log: Path, within: float) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                pytest.fail(f"{url} exited with {process.returncode}:\n{_tail(log)}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    pytest.fail(f"{url} not ready within {within}s:\n{_tail(log)}")


@asynccontextmanager
async def process(args: list[str], ready_url: str, log: Path, within: float = 60) -> AsyncIterator[None]:
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    try:
        await _wait_ready(ready_url, proc, log, within)
        yield
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.wait_for(proc.wait(), 10)


class Webhook:
    """Collects the notifications Alertmanager delivers: (alertname, labels, status) per alert."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        self.port = 0

    async def receive(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.notifications.extend(body.get("alerts", []))
        return web.Response(text="ok")

    def seen(self, alertname: str, status: str, **labels: str) -> bool:
        return any(
            a["labels"].get("alertname") == alertname
            and a["status"] == status
            and all(a["labels"].get(k) == v for k, v in labels.items())
            for a in self.notifications
        )


@asynccontextmanager
async def webhook() -> AsyncIterator[Webhook]:
    hook = Webhook()
    app = web.Application()
    app.router.add_post("/hook", hook.receive)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, LOOPBACK, 0).start()
    hook.port = runner.addresses[0][1]
    try:
        yield hook
    finally:
        await runner.cleanup()


@asynccontextmanager
async def server(
    workdir: Path, name: str, program: str, package: str, config: dict[str, Any], flags: list[str]
) -> AsyncIterator[int]:
    """One Prometheus-family server on a free loopback port with its YAML config; yields the port."""
    port = free_port()
    path = workdir / f"{name}.yml"
    path.write_text(yaml.safe_dump(config))
    args = [binary(program, package), f"--config.file={path}", f"--web.listen-address={LOOPBACK}:{port}", *flags]
    async with process(args, f"http://{LOOPBACK}:{port}/-/ready", workdir / f"{name}.log"):
        yield port


def alertmanager(workdir: Path, webhook_port: int) -> AbstractAsyncContextManager[int]:
    receiver = {"url": f"http://{LOOPBACK}:{webhook_port}/hook", "send_resolved": True}
    config = {
        "route": {
            "receiver": "test",
            "group_by": ["alertname", "mirror"],
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [{"name": "test", "webhook_configs": [receiver]}],
    }
    flags = [f"--storage.path={workdir / 'am-data'}", "--cluster.listen-address="]
    return server(workdir, "alertmanager", "prometheus-alertmanager", "prometheus-alertmanager", config, flags)


def prometheus(
    workdir: Path,
    exporter_port: int,
    rules: Path | None = None,
    alertmanager_port: int | None = None,
    scrape: dict[str, Any] | None = None,
) -> AbstractAsyncContextManager[int]:
    """Prometheus scraping the exporter every second, optionally evaluating ``rules`` and alerting; ``scrape`` adds
    to the scrape config (scheme, tls_config, basic_auth)."""
    job = {"job_name": "bitbucket-mirror-exporter", "static_configs": [{"targets": [f"{LOOPBACK}:{exporter_port}"]}]}
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [{**job, **(scrape or {})}],
    }
    if rules is not None:
        config["rule_files"] = [str(rules)]
    if alertmanager_port is not None:
        targets = [f"{LOOPBACK}:{alertmanager_port}"]
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": targets}]}]}
    flags = [f"--storage.tsdb.path={workdir / 'prom-data'}", "--rules.alert.resend-delay=1s"]
    return server(workdir, "prometheus", "prometheus", "prometheus", config, flags)
