"""The REST source's running part for one configuration: the primary's poller, a poller per mirror (configured, and
discovered from the primary's mirrorServers), each farm's nodes, and push dating, every loop on one grid.

Every REST loop starts its cycles on the grid ``anchor + k * poll.interval_seconds`` so each mirror's cycle meets the
primary's (exporter/rest/poller.py, ``CycleHandoff``). After a reload the grid is kept: a target already polled waits
for the grid's next point, a new one is polled at once, so reloads do not add cycles.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

from exporter.config import PRIMARY_TARGET, Credentials, MirrorTarget, PrimaryConfig
from exporter.rest.api import MirrorApi, PrimaryApi, normalize_url
from exporter.rest.client import BitbucketClient
from exporter.rest.config import LagConfig
from exporter.rest.models import MirrorServer
from exporter.rest.nodes import NodeFleet
from exporter.rest.poller import DriftJob, MirrorPoller, PrimaryPoller
from exporter.rest.push_dating import PushDating
from exporter.rest.state import FarmState, MirrorState
from exporter.sources import next_start, poll_forever
from exporter.supervisor import Supervisor, Work
from exporter.workers import WorkerPool

log = logging.getLogger("exporter")


@dataclass(frozen=True)
class RestConfig:
    """What the REST source is configured with (parts of the composition root's ``Settings``)."""

    primary: PrimaryConfig
    mirrors: list[MirrorTarget]
    interval: float
    lag: LagConfig
    discover_mirrors: bool


class RestPolling:
    """Starts and follows every REST loop of one configuration under its ``supervisor``."""

    def __init__(
        self,
        config: RestConfig,
        state: FarmState,
        client: BitbucketClient,
        supervisor: Supervisor,
        workers: WorkerPool,
        resume_anchor: float | None = None,
    ) -> None:
        self._config = config
        self._state = state
        self._client = client
        self._supervisor = supervisor
        # The previous configuration's grid, when this one replaces it (a reload).
        self._resumed = resume_anchor is not None
        self.anchor = resume_anchor if resume_anchor is not None else time.monotonic()
        self.primary_api = PrimaryApi(client, config.primary.url, config.primary)
        discover = self._discover if config.discover_mirrors else None
        self._primary = PrimaryPoller(state.primary, self.primary_api, config.interval, workers, discover)
        # One for every mirror and node: the activity pages are the primary's, whoever diverges.
        self.dating = PushDating(self.primary_api, state.primary, config.lag)
        self._mirrors: dict[str, MirrorPoller] = {}
        self._fleets: dict[str, NodeFleet] = {}
        self._discovered = supervisor.fleet("discovered mirror")
        self._discovered_states: dict[str, MirrorState] = {}

    def grid_loop(self, poll: Callable[[], Awaitable[None]], polled_before: bool) -> Work:
        """A poll loop on the shared grid; after a reload, a target already polled keeps its phase."""
        interval = self._config.interval
        first_at = next_start(time.monotonic(), interval, self.anchor) if self._resumed and polled_before else None
        return poll_forever(poll, interval, self.anchor, first_at)

    def start(self) -> None:
        """The primary's loop and each configured mirror's (discovered ones are found again by discovery)."""
        self._supervisor.spawn(self.grid_loop(self._primary.poll_once, self._state.primary.cycles > 0), "primary")
        self._state.mirrors[:] = [m for m in self._state.mirrors if not m.discovered]
        for mirror_state, mirror in zip(self._state.mirrors, self._config.mirrors, strict=True):
            self._start_mirror(mirror_state, mirror.credentials_or(self._config.primary), mirror)

    def first_cycle(self, mirror: str) -> Callable[[], Awaitable[None]]:
        """Waits (boundedly) for the mirror's first cycle: its farmNodes are known then."""
        return self._mirrors[mirror].first_cycle.wait

    def _mirror_poller(self, state: MirrorState, credentials: Credentials, mirror: MirrorTarget | None) -> MirrorPoller:
        api = MirrorApi(self._client, state.url, credentials, state.name)
        interval = self._config.interval
        fleet = None
        if mirror is not None and mirror.nodes is not None:
            drift = DriftJob(self._primary, self._state.policy, interval, dating=self.dating)
            nodes = self._supervisor.fleet(f"{state.name} node")
            fleet = NodeFleet(state, mirror.nodes, credentials, self._client, drift, interval, nodes, self.grid_loop)
            self._fleets[state.name] = fleet
        poller = MirrorPoller(state, api, self._primary, self._state.policy, interval, fleet, self.dating)
        self._mirrors[state.name] = poller
        return poller

    def _start_mirror(self, state: MirrorState, credentials: Credentials, mirror: MirrorTarget) -> None:
        poller = self._mirror_poller(state, credentials, mirror)
        # Looked up at each cycle, not bound once: bench/scale_clients.py times MirrorPoller.poll_once.
        self._supervisor.spawn(self.grid_loop(lambda: poller.poll_once(), state.cycles > 0), f"mirror:{state.name}")

    async def _discover(self, servers: list[MirrorServer]) -> None:
        """Follow the primary's mirrorServers: add mirrors it lists that are not configured, drop ones it no longer
        lists. Configured mirrors win over discovered ones with the same base URL."""
        listed = {normalize_url(s.base_url): s for s in servers if s.base_url}
        configured = {normalize_url(m.url) for m in self._config.mirrors}
        names = {m.name for m in self._state.mirrors}
        for url, server in listed.items():
            if url in configured or url in self._discovered_states:
                continue
            name = server.name or server.id
            if name in names or name == PRIMARY_TARGET:
                name = f"{name}-{server.id}"
            assert server.base_url is not None
            state = MirrorState(name=name, url=server.base_url.rstrip("/"), discovered=True)
            self._state.mirrors.append(state)
            names.add(name)
            self._discovered_states[url] = state
            self._mirror_poller(state, self._config.primary, None)
            log.info("mirror discovered", extra={"mirror": name, "url": state.url})
        loops = {
            url: partial(self.grid_loop, self._mirrors[state.name].poll_once, False)
            for url, state in self._discovered_states.items()
            if url in listed
        }
        for url in await self._discovered.reconcile(loops):
            state = self._discovered_states.pop(url)
            self._state.mirrors.remove(state)
            del self._mirrors[state.name]
            log.info("discovered mirror gone", extra={"mirror": state.name})

    async def poll_once(self) -> None:
        """One more cycle of every REST target now, beside the schedule (bench/scale.py)."""
        nodes = [p for fleet in self._fleets.values() for p in fleet.pollers()]
        await asyncio.gather(
            self._primary.poll_once(),
            *(p.poll_once() for p in self._mirrors.values()),
            *(p.poll_once() for p in nodes),
        )
