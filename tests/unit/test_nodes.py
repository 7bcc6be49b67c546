"""The node fleet's bookkeeping: which node states it keeps as farmNodes and reloads come and go (no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from types import SimpleNamespace
from typing import Any

from exporter.config import Credentials, NodesConfig
from exporter.drift import DriftReport
from exporter.rest.models import ClusterNode, NodeAddress
from exporter.rest.nodes import NodeFleet
from exporter.rest.poller import DriftJob
from exporter.rest.state import MirrorState, NodeState
from exporter.sources import SourceState
from exporter.state import Policy
from exporter.supervisor import Supervisor
from exporter.workers import WorkerPool


def farm_nodes(*names: str) -> SourceState[list[ClusterNode]]:
    nodes = [
        ClusterNode(id=n, name=n, address=NodeAddress(address=f"10.0.0.{i}", port=5701)) for i, n in enumerate(names)
    ]
    return SourceState(value=nodes, success=True, value_timestamp=0.0)


def fleet(mirror: MirrorState, spawned: list[Any], supervisor: Supervisor, workers: WorkerPool) -> NodeFleet:
    def loop(poll: Any, polled_before: bool) -> Coroutine[Any, Any, None]:
        spawned.append(poll)  # a loop is made when its node is started
        return asyncio.sleep(3600)

    primary = SimpleNamespace(workers=workers)  # the one part of the primary's poller a fleet reads
    drift = DriftJob(primary, Policy(), 30.0)  # type: ignore[arg-type]
    config = NodesConfig(url_template="http://{address}:7990")
    nodes = supervisor.fleet("node")
    return NodeFleet(mirror, config, Credentials(), None, drift, 30.0, nodes, loop)  # type: ignore[arg-type]


async def test_a_reload_keeps_each_nodes_state_and_a_node_that_leaves_goes(workers: WorkerPool) -> None:
    mirror = MirrorState("sydney", "https://farm.example.com")
    mirror.farm_nodes = farm_nodes("a", "b")
    learned = NodeState("a", "http://10.0.0.0:7990", drift=DriftReport({}, {"7": 100.0}, []))
    moved = NodeState("b", "http://10.9.9.9:7990")  # b's address changed since: it starts over
    mirror.nodes = {"a": learned, "b": moved}
    spawned: list[Any] = []
    supervisor = Supervisor()
    await supervisor.start()
    reloaded = fleet(mirror, spawned, supervisor, workers)
    await reloaded.follow()
    assert mirror.nodes["a"] is learned
    assert mirror.nodes["b"] is not moved and mirror.nodes["b"].url == "http://10.0.0.1:7990"
    assert len(spawned) == 2
    # b leaves farmNodes: its state (and its series) go; a keeps its poller.
    mirror.farm_nodes = farm_nodes("a")
    await reloaded.follow()
    assert list(mirror.nodes) == ["a"] and mirror.nodes["a"] is learned and len(spawned) == 2
    assert supervisor.running == 1  # b's loop was cancelled and awaited
    await supervisor.stop()
    assert supervisor.running == 0
