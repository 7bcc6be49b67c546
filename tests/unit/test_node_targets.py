"""Which nodes a farm has and their URLs: from farmNodes with a template, or a static list."""

from __future__ import annotations

from exporter.config import Credentials, NodesConfig, StaticNode
from exporter.node_targets import node_targets
from exporter.rest.models import ClusterNode, NodeAddress

MIRROR = Credentials(username="admin", password="pw")


def farm(*entries: tuple[str, str | None, str | None, int | None]) -> list[ClusterNode]:
    return [
        ClusterNode(id=node_id, name=name, address=NodeAddress(address=address, port=port) if address else None)
        for node_id, name, address, port in entries
    ]


def test_a_template_gives_each_farm_node_its_url_and_skips_nodes_without_an_address() -> None:
    config = NodesConfig(url_template="http://{address}:7990/{id}/{name}/{port}")
    nodes = farm(("id-1", "node-1", "10.0.0.1", 5701), ("id-2", None, "fd00::2", 5701), ("id-3", "ghost", None, None))
    targets = node_targets(config, MIRROR, nodes)
    assert [(t.name, t.url) for t in targets] == [
        ("node-1", "http://10.0.0.1:7990/id-1/node-1/5701"),
        ("id-2", "http://[fd00::2]:7990/id-2/id-2/5701"),  # no name: the id; IPv6 in brackets
    ]
    assert all(t.credentials is MIRROR for t in targets)


def test_static_nodes_keep_their_own_credentials_and_fill_templates_from_their_url() -> None:
    own = StaticNode(name="b", url="https://10.0.0.2:8443", username="other", password="x")
    config = NodesConfig(static=[StaticNode(name="a", url="http://10.0.0.1:7990"), own])
    a, b = node_targets(config, MIRROR, farm(("ignored", "ignored", "10.9.9.9", 1)))
    assert (a.name, a.url, a.credentials) == ("a", "http://10.0.0.1:7990", MIRROR)
    assert b.credentials is own
    assert b.fill("http://{address}:9999/metrics") == "http://10.0.0.2:9999/metrics"


def test_without_a_nodes_block_farm_nodes_still_name_the_nodes_for_jmx() -> None:
    (target,) = node_targets(None, MIRROR, farm(("id-1", "node-1", "10.0.0.1", 5701)))
    assert target.url == "" and target.fill("http://{address}:9998/metrics") == "http://10.0.0.1:9998/metrics"
