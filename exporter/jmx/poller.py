"""Polls each node of one mirror, on the mirror's jmx.interval_seconds: over JMX with jmxquery, or from the node's
jmx_exporter pages (``jmx.exporter_url_template`` and ``jmx.mesh_exporter_url_template``) where Atlassian's Helm chart
already serves them. Both give the same reading (exporter/jmx/reading.py), under the same metric names.

Every node polls in its own loop with its own hard timeout, so a hung node never delays another node or a scrape.
A global semaphore bounds how many jmxquery JVMs run at once (each costs a JVM start, see docs/jmx.md); the
jmx_exporter path starts none.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

from exporter.jmx.config import JmxConfig, JmxCredentials
from exporter.jmx.exporter_text import parse_exporter_text
from exporter.jmx.query import jmxquery_command, run_jmxquery
from exporter.jmx.reading import NodeReading, read_node
from exporter.jmx.state import JmxNodeState, JmxState
from exporter.node_targets import NodeTarget
from exporter.secret_files import prepare
from exporter.sources import SourceState, poll_forever, run_source
from exporter.supervisor import Fleet
from exporter.urls import host_for_url

log = logging.getLogger("exporter.jmx")


# GET a URL and return its body as text, raising FetchError (the exporter's HTTP client, with the top-level tls).
FetchText = Callable[[str], Awaitable[str]]


@dataclass(frozen=True)
class NodeSource:
    """Where one node's reading comes from: a JMX service URL with credentials, or jmx_exporter page URLs."""

    urls: tuple[str, ...]
    credentials: JmxCredentials | None = None


class JmxPoller:
    """One mirror's JMX nodes: follows the node list every ``follow_seconds`` (a fleet of per-node loops, each on
    jmx.interval_seconds) and writes their states into ``states[mirror]``."""

    def __init__(
        self,
        mirror: str,
        states: JmxState,
        config: JmxConfig,
        jvm_slots: asyncio.Semaphore,
        wait_for_farm_nodes: Callable[[], Awaitable[None]],
        fleet: Fleet[tuple[str, str]],
        follow_seconds: float,
        farm: Callable[[], list[NodeTarget]],
        nodes: Callable[[], list[NodeTarget]] | None = None,
        fetch_text: FetchText | None = None,
    ) -> None:
        self._mirror = mirror
        self._states = states
        # The mirror's farmNodes as node targets (no URL template: their addresses), and its nodes as the REST side
        # names them (nodes.static or farmNodes with nodes.url_template); and how to read a page.
        self._farm = farm
        self._targets = nodes or farm
        self._fetch_text = fetch_text
        # How often the node list is rebuilt from farmNodes: the mirror's poll interval, not the slower JMX one.
        self._follow_seconds = follow_seconds
        self._fleet = fleet
        self._config = config
        self._slots = jvm_slots
        self._wait_for_farm_nodes = wait_for_farm_nodes
        self._warned: dict[str, tuple[str, ...]] = {}

    def _nodes(self) -> dict[str, NodeSource]:
        """Node name -> where to read it: the configured JMX nodes, one JMX URL per farmNodes address, or the
        jmx_exporter pages of each of the mirror's nodes."""
        config = self._config
        if config.from_exporter:
            templates = [t for t in (config.exporter_url_template, config.mesh_exporter_url_template) if t]
            # The mirror's last good node list: a failing farmNodes poll keeps the nodes it last listed.
            return {t.name: NodeSource(tuple(t.fill(template) for template in templates)) for t in self._targets()}
        if config.nodes:
            return {
                node.name: NodeSource(
                    (node.url, *([node.mesh_url] if node.mesh_url else [])), config.credentials_for(node)
                )
                for node in config.nodes
            }
        nodes: dict[str, NodeSource] = {}
        for node in self._farm():
            host = host_for_url(node.address)
            ports = [port for port in (config.port, config.mesh_port) if port is not None]
            urls = tuple(config.url_template.format(address=host, port=port) for port in ports)
            nodes[node.name] = NodeSource(urls, config)
        return nodes

    async def _read(self, source: NodeSource) -> NodeReading:
        config = self._config
        if source.credentials is None:
            assert self._fetch_text is not None  # the app gives one whenever the exporter templates are set
            pages = await asyncio.gather(*(self._fetch_text(url) for url in source.urls))
            rows = [row for page in pages for row in parse_exporter_text(page, config.attributes)]
            return read_node(rows, config.match, config.attributes)
        credentials = source.credentials
        await prepare(credentials.password_file)  # the file read off the event loop
        password = credentials.resolved_password()
        secret = password.get_secret_value() if password is not None else None
        rows = []
        # Bitbucket's JVM, then the Mesh sidecar's where one is given: one jmxquery JVM each.
        for url, object_names in zip(source.urls, (config.object_names, config.mesh_object_names), strict=False):
            command = jmxquery_command(
                config.java, config.java_options, url, credentials.username, secret, object_names
            )
            async with self._slots:
                rows += await run_jmxquery(command, config.timeout_seconds, secret)
        return read_node(rows, config.match, config.attributes)

    def _log_warnings(self, node: str, state: JmxNodeState) -> None:
        reading = state.source.value
        warnings = reading.warnings if reading is not None and state.source.success else ()
        if warnings != self._warned.get(node, ()):
            for warning in warnings:
                log.warning("jmx reading", extra={"target": self._mirror, "node": node, "detail": warning})
            self._warned[node] = warnings

    async def _poll_node(self, node: str, state: JmxNodeState, source: NodeSource) -> None:
        await run_source(self._mirror, f"jmx:{node}", state.source, lambda: self._read(source))
        self._log_warnings(node, state)

    async def _node_loop(self, node: str, state: JmxNodeState, source: NodeSource) -> None:
        async def poll() -> None:
            await self._poll_node(node, state, source)

        await poll_forever(poll, self._config.interval_seconds)

    async def poll_once(self) -> None:
        """Start a loop for each new node, stop the loops of nodes no longer listed (or moved)."""
        nodes = self._nodes()
        known = self._states.get(self._mirror, {})
        updated: dict[str, JmxNodeState] = {}
        wanted = {}
        for name, source in nodes.items():
            url = " ".join(source.urls)
            current = known.get(name)
            state = updated[name] = (
                current
                if current is not None and current.url == url
                else JmxNodeState(url, SourceState(own_interval=self._config.interval_seconds))
            )
            wanted[(name, url)] = partial(self._node_loop, name, state, source)
        for name, _ in await self._fleet.reconcile(wanted):
            if name not in nodes:
                self._warned.pop(name, None)
                log.info("jmx node gone", extra={"target": self._mirror, "node": name})
        self._states[self._mirror] = updated

    async def run(self) -> None:
        """Follow the node list; each node polls in its own loop, so a node that hangs until its timeout never
        delays another node's poll. Cancelling a node's loop kills its JVM (exporter/jmx/query.py)."""
        if not self._config.nodes:
            await self._wait_for_farm_nodes()  # nodes come from farmNodes (or nodes.static, there at once)
        await poll_forever(self.poll_once, self._follow_seconds)
