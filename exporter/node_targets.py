"""Which nodes a mirror farm has and how each is reached: from ``nodes.static``, or from the mirror's farmNodes with
a URL template. Shared by the node-by-node REST polling (exporter/rest/nodes.py) and the jmx_exporter pages
(exporter/jmx/poller.py), so a node carries the same ``node`` label in both."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from exporter.config import Credentials, NodesConfig
from exporter.urls import fill_node_template


class FarmNodeAddress(Protocol):
    @property
    def address(self) -> str | None: ...

    @property
    def port(self) -> int | None: ...


class FarmNode(Protocol):
    """What a farmNodes entry tells of a node (the REST source's ``ClusterNode`` is one): named here by shape, so the
    core needs no source's model."""

    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str | None: ...

    @property
    def address(self) -> FarmNodeAddress | None: ...


@dataclass(frozen=True)
class NodeTarget:
    """One node, and what a URL template may say of it: its farmNodes ``address``, ``port``, ``id`` and ``name``
    (a static node's come from its URL). ``url`` is its REST base URL, empty when the mirror has no ``nodes`` block."""

    name: str
    url: str
    address: str
    port: int | None
    node_id: str
    credentials: Credentials

    def fill(self, template: str) -> str:
        return fill_node_template(template, self.address, self.port, self.node_id, self.name)


def node_targets(
    config: NodesConfig | None, credentials: Credentials, farm_nodes: Sequence[FarmNode]
) -> list[NodeTarget]:
    """The static list, or one per farmNodes entry with an address (named by its ``name``, else its ``id``). A static
    node without credentials of its own uses the mirror's."""
    if config is not None and config.static:
        targets = []
        for node in config.static:
            parts = urlsplit(node.url)
            address, port = parts.hostname or "", parts.port
            targets.append(NodeTarget(node.name, node.url, address, port, node.name, node.credentials_or(credentials)))
        return targets
    template = config.url_template if config is not None else None
    targets = []
    for entry in farm_nodes:
        if entry.address is None or not entry.address.address:
            continue
        name = entry.name or entry.id
        address, port = entry.address.address, entry.address.port
        url = fill_node_template(template, address, port, entry.id, name) if template is not None else ""
        targets.append(NodeTarget(name, url, address, port, entry.id, credentials))
    return targets
