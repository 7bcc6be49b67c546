"""Wires configuration, client, pollers and the web server into one running exporter."""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

from exporter import __version__
from exporter.api import MirrorApi, PrimaryApi
from exporter.client import BitbucketClient
from exporter.collector import MirrorFarmCollector
from exporter.config import Settings
from exporter.poller import MirrorPoller, PrimaryPoller, poll_forever
from exporter.state import ExporterState, MirrorState, PrimaryState
from exporter.web import make_app

log = logging.getLogger("exporter")

DEFAULT_PORT = 9879


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{text!r} is not HOST:PORT")
        return cls(host.strip("[]") or "0.0.0.0", int(port))


def _ssl_context(settings: Settings) -> ssl.SSLContext | bool:
    if not settings.tls.verify:
        return False
    if settings.tls.ca_file is not None:
        return ssl.create_default_context(cafile=str(settings.tls.ca_file))
    return True


def build_state(settings: Settings) -> ExporterState:
    return ExporterState(
        primary=PrimaryState(url=settings.primary.url),
        mirrors=[MirrorState(name=m.name, url=m.url) for m in settings.mirrors],
    )


class Exporter:
    """One running exporter: call ``start`` then ``stop``; ``port`` is the bound port (useful with port 0)."""

    def __init__(self, settings: Settings, listen: ListenAddress) -> None:
        self.settings = settings
        self.listen = listen
        self.state = build_state(settings)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(MirrorFarmCollector(self.state))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.port = listen.port
        self.client: BitbucketClient | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(ssl=_ssl_context(self.settings), limit=0)
        self._session = aiohttp.ClientSession(
            connector=connector, headers={"User-Agent": f"bitbucket-mirror-exporter/{__version__}"}
        )
        self.client = BitbucketClient(self._session, self.settings.poll)
        primary = self.settings.primary
        pollers: list[MirrorPoller | PrimaryPoller] = [
            PrimaryPoller(self.state.primary, PrimaryApi(self.client, primary.url, primary))
        ]
        for mirror_cfg, mirror_state in zip(self.settings.mirrors, self.state.mirrors, strict=True):
            api = MirrorApi(self.client, mirror_cfg.url, mirror_cfg.credentials_or(primary))
            pollers.append(MirrorPoller(mirror_state, api))

        self._runner = web.AppRunner(make_app(self.state, self.registry), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.listen.host, self.listen.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        interval = self.settings.poll.interval_seconds
        self._tasks = [asyncio.create_task(poll_forever(p, interval, self._stop)) for p in pollers]
        log.info(
            "exporter started",
            extra={
                "version": __version__,
                "address": f"{self.listen.host}:{self.port}",
                "mirrors": len(self.settings.mirrors),
                "interval_seconds": interval,
            },
        )

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        log.info("exporter stopped")


async def serve_until_stopped(exporter: Exporter, stop: asyncio.Event) -> None:
    await exporter.start()
    try:
        await stop.wait()
    finally:
        await exporter.stop()
