"""Each node of a mirror farm, read at its own URL.

Bitbucket's ``supportInfo/repoSyncStatus`` lists the repositories "on this mirror node": every node keeps its own
copy, and the farm URL's load balancer picks a node per client. With ``nodes`` configured, every node is read at its own
base URL (built from farmNodes with ``nodes.url_template``, or listed in ``nodes.static``), each in its own task on
the grid all REST pollers share, so a hung node delays neither its peers nor a scrape. Each node's listing is compared
with the primary's on its own (a node's drift and lag); the mirror's then is the union over the nodes that answered
this cycle (``drift.union``): a repository is out of sync on the mirror when it is on any node, and the mirror's lag is
its worst node's. Farm-wide sources stay once per mirror (exporter/rest/poller.py), and the primary is read once per
cycle whatever the number of nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from functools import partial

from exporter.config import Credentials, NodesConfig
from exporter.drift import DriftReport
from exporter.node_targets import NodeTarget, node_targets
from exporter.rest.api import OUT_OF_SYNC_REPOS, MirrorApi
from exporter.rest.client import BitbucketClient
from exporter.rest.feed import ListingFeed
from exporter.rest.listing_work import MIRROR, union_of
from exporter.rest.poller import (
    CycleHandoff,
    DriftJob,
    GridLoop,
    ListingRead,
    cycle_slack,
    read_status,
    scope_of,
)
from exporter.rest.state import MirrorState, NodeState, RepoSyncSummary
from exporter.sources import FetchError, run_source
from exporter.supervisor import Fleet

log = logging.getLogger("exporter.poller")

# The reason a node-by-node mirror's listing fails with when its nodes failed without one (none was listed).
NO_NODE_ANSWERED = "no_node_answered"


def pushed(report: DriftReport) -> dict[str, float]:
    """The divergences of a node's report that push dating dated (the worker holds the report as it compared it)."""
    return {r.repo_id: r.diverged_since for r in report.repositories if r.from_push and r.diverged_since is not None}


class NodePoller:
    """One node's cycle: its /status and its listing side by side, then its own drift against the primary's listing
    of the same cycle."""

    def __init__(
        self,
        mirror: MirrorState,
        state: NodeState,
        api: MirrorApi,
        drift: DriftJob,
        interval: float,
        joined: float | None = None,
    ) -> None:
        self.state = state
        # The start (monotonic) of the mirror's cycle that found this node: its first cycle, which begins mid-way
        # (after the mirror's farm-wide sources, perhaps seconds later), counts as that cycle, so it is compared with
        # the primary's listing of that cycle instead of waiting up to an interval for the next one.
        self._joined = joined
        self._slack = cycle_slack(interval)
        self.done = CycleHandoff(self._slack)
        # Monotonic starts of the latest cycle whose listing was read, and whose drift was computed.
        self.answered: float = -1e18
        self.analysed: float = -1e18
        # The start of the cycle under way, None between cycles.
        self.running: float | None = None
        self._mirror = mirror
        self._api = api
        self._drift = drift
        self._target = f"{mirror.name}/{state.name}"
        # In the farm's worker, beside the farm's other nodes: their union is taken there.
        self.listing = ListingFeed(drift.workers.worker(mirror.name), self._target, MIRROR)

    def answered_in(self, cycle_started: float) -> bool:
        """Whether this node's listing was read in the cycle that began at ``cycle_started``."""
        return self.answered >= cycle_started - self._slack

    def busy_with(self, cycle_started: float) -> bool:
        """Whether this node is still in the cycle that began at ``cycle_started``: begun, not yet finished."""
        running = self.running
        return running is not None and running >= cycle_started - self._slack and not self.done.of_cycle(cycle_started)

    async def poll_once(self) -> None:
        node, api, target = self.state, self._api, self._target
        started = time.monotonic() if self._joined is None else self._joined
        self._joined = None
        self.running = started
        listing = ListingRead(api, self.listing)

        async def out_of_sync_repos() -> frozenset[str]:
            return frozenset(await api.out_of_sync_repositories())

        # Bitbucket's own delayed list is node-local where it is out-of-sync-repos (8.x to 9.4, opt-in); 9.5+'s
        # delayed-sync already covers every node and is read once at the farm URL.
        delayed = self._mirror.delayed_sync.value
        sources = [
            run_source(target, "status", node.status, lambda: read_status(api, node.states_seen)),
            run_source(target, "repo_sync_status", node.repo_sync_status, listing),
        ]
        if delayed is not None and delayed.available and delayed.endpoint == OUT_OF_SYNC_REPOS:
            sources.append(run_source(target, "out_of_sync_repos", node.out_of_sync_repos, out_of_sync_repos))
        try:
            await asyncio.gather(*sources)
            if node.status.success and node.status.value is not None:
                node.states_seen.add(node.status.value.state)
            if not listing.ready:
                return  # this node's listing failed: its last report rides over until its inputs are stale
            self.answered = started
            scope = scope_of(self._mirror.sync_settings.value)
            read_at, began = node.repo_sync_status.last_success_timestamp, node.repo_sync_status.value_started_timestamp
            report = await self._drift.run(listing.take(), read_at, node.drift, scope, started, api.clock(), began)
            if report is not None:
                node.drift = report
                self.analysed = started
        finally:
            self.running = None
            self.done.publish(started)


class NodeFleet:
    """The nodes of one mirror: follows its node list (static, or farmNodes every cycle), runs a poller per node, and
    after each of the mirror's cycles takes the union of the nodes that answered."""

    def __init__(
        self,
        mirror: MirrorState,
        config: NodesConfig,
        credentials: Credentials,
        client: BitbucketClient,
        drift: DriftJob,
        interval: float,
        fleet: Fleet[tuple[str, str]],
        loop: GridLoop,
    ) -> None:
        self._mirror = mirror
        self._config = config
        self._credentials = credentials
        self._client = client
        self._drift = DriftJob(drift.primary, drift.policy, drift.interval, per_node=True, dating=drift.dating)
        self._interval = interval
        self._fleet = fleet
        self._loop = loop
        self._pollers: dict[str, NodePoller] = {}
        # The nodes a failing farmNodes poll last listed stay until it answers again.
        self.targets: list[NodeTarget] = []

    async def follow(self, cycle_started: float | None = None) -> None:
        """Start a poller for each new node (or one that moved), stop those of nodes no longer listed (their series
        go with them). A node found in the mirror's cycle that began at ``cycle_started`` joins that cycle."""
        farm_nodes = self._mirror.farm_nodes.value or []
        self.targets = node_targets(self._config, self._credentials, farm_nodes)
        pollers: dict[str, NodePoller] = {}
        for target in self.targets:
            current = self._pollers.get(target.name)
            if current is not None and current.state.url == target.url:
                pollers[target.name] = current
                continue
            # A reload keeps what a node taught (its last values, its drift's first-seen times), as for mirrors.
            kept = self._mirror.nodes.get(target.name)
            state = kept if kept is not None and kept.url == target.url else NodeState(target.name, target.url)
            api = MirrorApi(self._client, target.url, target.credentials, f"{self._mirror.name}/{target.name}")
            pollers[target.name] = NodePoller(self._mirror, state, api, self._drift, self._interval, cycle_started)
            log.info(
                "mirror node followed", extra={"target": self._mirror.name, "node": target.name, "url": target.url}
            )
        for name, gone in self._pollers.items():
            if pollers.get(name) is not gone:
                await gone.listing.forget()
        self._pollers = pollers
        loops = {(name, p.state.url): partial(self._loop, p.poll_once, False) for name, p in pollers.items()}
        for name, _ in await self._fleet.reconcile(loops):
            if name not in pollers:
                log.info("mirror node gone", extra={"target": self._mirror.name, "node": name})
        self._mirror.nodes = {name: p.state for name, p in pollers.items()}

    async def cycle(self, cycle_started: float) -> None:
        """After the mirror's farm-wide sources: follow the node list, wait (at most an interval) for every node's
        cycle, then take the union over the nodes that answered."""
        await self.follow(cycle_started)
        pollers = self.pollers()
        await self._wait_for_nodes(pollers, cycle_started)
        answered = [p for p in pollers if p.answered_in(cycle_started)]
        mirror = self._mirror
        mirror.nodes_polled = len(answered)
        mirror.nodes_polled_at = time.time()
        summaries = [p.state.repo_sync_status.value for p in answered if p.state.repo_sync_status.value is not None]

        async def listing_union() -> RepoSyncSummary:
            if not summaries:
                # No node answered: the mirror's listing fails with its first node's reason (what DriftUnknown
                # names), else no_node_answered.
                reasons = [p.state.repo_sync_status.error_reason for p in pollers]
                reason = next((r for r in reasons if r), NO_NODE_ANSWERED)
                raise FetchError(reason, "no node's listing was read this cycle")
            return RepoSyncSummary.union(summaries)

        def oldest_read() -> float:
            """The union is as old as the oldest node listing in it."""
            return min(p.state.repo_sync_status.last_success_timestamp or 0.0 for p in answered)

        if pollers:
            await run_source(mirror.name, "repo_sync_status", mirror.repo_sync_status, listing_union, oldest_read)
        analysed = [(p, p.state.drift) for p in answered if p.analysed == p.answered and p.state.drift is not None]
        if not analysed:
            return
        # In the farm's worker, which holds every node's report (a restart since: the union waits for the next cycle).
        worker = self._drift.workers.worker(mirror.name)
        if all(p.listing.compared_generation == worker.generation for p, _ in analysed):
            nodes = [(p.listing.target, pushed(report)) for p, report in analysed]
            with contextlib.suppress(FetchError):
                mirror.take_report(await worker.call(union_of, nodes, self._drift.policy.keep_all), time.time())

    async def _wait_for_nodes(self, pollers: list[NodePoller], cycle_started: float) -> None:
        """Wait at most an interval for every node's cycle, so a hung node holds up neither the union nor the next
        cycle; then on for the nodes that are merely slow: those whose listing was read and whose drift is being
        computed (bounded by the primary's wait and the worker), then those still reading for a moment more (a
        fraction of the interval: peers of the same speed answer milliseconds apart), and, when no node's listing has
        been read yet, the first node still reading. Without that, a cycle longer than the interval (a first cycle of
        a large estate) took the union over nobody: ``no_node_answered`` logged and drift unknown for an interval, of
        nodes that were answering."""
        await asyncio.gather(*(p.done.wait_for_cycle(cycle_started, self._interval) for p in pollers))
        while True:
            busy = [p for p in pollers if p.busy_with(cycle_started)]
            analysing = [p for p in busy if p.answered_in(cycle_started)]
            if analysing:
                await asyncio.gather(*(p.done.wait_for_cycle(cycle_started, math.inf) for p in analysing))
                # Peers still reading began with them and are as slow (their answers arrive milliseconds apart):
                # a moment more (a fraction of the interval, bounded) lets them in rather than leave them out.
                reading = [p for p in pollers if p.busy_with(cycle_started) and not p.answered_in(cycle_started)]
                slack = cycle_slack(self._interval)
                await asyncio.gather(*(p.done.wait_for_cycle(cycle_started, slack) for p in reading))
            elif busy and not any(p.answered_in(cycle_started) for p in pollers):
                waits = [asyncio.ensure_future(p.done.wait_for_cycle(cycle_started, math.inf)) for p in busy]
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for wait in waits:
                        wait.cancel()
            else:
                return

    def pollers(self) -> list[NodePoller]:
        return list(self._pollers.values())
