"""Metric families for the mirror nodes' JMX readings, rendered from the latest JMX poll of each node."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
    SummaryMetricFamily,
)

from exporter.jmx.reading import NodeReading
from exporter.jmx.state import JmxNodeState, JmxState
from exporter.sources import SourceFamilies, gauges

JMX_CACHED = (
    " Read over JMX every jmx.interval_seconds; scrapes read the last reading, absent once older than the larger of "
    "poll.stale_after_seconds and 3 x jmx.interval_seconds."
)
NODE = ["mirror", "node"]
SYNC = [*NODE, "sync"]


_gauge = gauges(JMX_CACHED, NODE)


@dataclass(frozen=True)
class Node:
    mirror: str
    name: str
    state: JmxNodeState
    # The node's reading while fresh (the larger of poll.stale_after_seconds and 3 x jmx.interval_seconds).
    reading: NodeReading | None

    @property
    def labels(self) -> list[str]:
        return [self.mirror, self.name]


def jmx_metrics(mirrors: JmxState, now: float, stale_after: float) -> Iterator[Metric]:
    """Every JMX family, from each mirror's nodes (by mirror name, in the configuration's order)."""
    nodes = [
        Node(mirror, name, state, state.source.fresh(now, stale_after))
        for mirror, jmx_nodes in mirrors.items()
        for name, state in jmx_nodes.items()
    ]
    health = _health(nodes)
    yield health.success
    yield from _timers(nodes)
    yield from _beans(nodes)
    yield from (health.duration, health.last_success, health.errors)


def _health(nodes: list[Node]) -> SourceFamilies:
    """How each node's JMX polls went (exporter/sources.py)."""
    health = SourceFamilies(
        GaugeMetricFamily(
            "bitbucket_mirror_jmx_up", "1 when the last JMX poll of the mirror node succeeded, else 0.", labels=NODE
        ),
        GaugeMetricFamily(
            "bitbucket_mirror_exporter_jmx_poll_duration_seconds",
            "How long the last JMX poll of the node took, JVM start included.",
            labels=NODE,
        ),
        GaugeMetricFamily(
            "bitbucket_mirror_exporter_jmx_last_success_timestamp_seconds",
            "When the node was last read over JMX, as a Unix timestamp: the age of its values.",
            labels=NODE,
        ),
        CounterMetricFamily(
            "bitbucket_mirror_exporter_jmx_poll_errors",
            "Failed JMX polls of the node, by reason.",
            labels=[*NODE, "reason"],
        ),
    )
    for node in nodes:
        health.add(dict(zip(NODE, node.labels, strict=True)), node.state.source)
    return health


def _timers(nodes: list[Node]) -> Iterator[Metric]:
    """The mirror sync timers (incremental, snapshot, farm vet): Dropwizard timers read over JMX."""
    syncs = CounterMetricFamily(
        "bitbucket_mirror_node_syncs",
        "Syncs the node has timed since it started (the timer's Count), by sync kind." + JMX_CACHED,
        labels=SYNC,
    )
    # A summary, as Prometheus' own Dropwizard bridge exports timers: quantiles plus _count, and no _sum, which a
    # Dropwizard timer does not keep.
    quantiles = SummaryMetricFamily(
        "bitbucket_mirror_node_sync_duration_seconds",
        "Sync duration quantiles as reported by the node: Dropwizard decaying-reservoir percentiles (recent syncs "
        "weigh more), not computed by Prometheus and not aggregatable across nodes; _count is the timer's Count."
        + JMX_CACHED,
        labels=SYNC,
    )
    mean = _gauge("bitbucket_mirror_node_sync_duration_mean_seconds", "Mean sync duration (decaying reservoir).", SYNC)
    maximum = _gauge("bitbucket_mirror_node_sync_duration_max_seconds", "Longest sync in the reservoir.", SYNC)
    minimum = _gauge("bitbucket_mirror_node_sync_duration_min_seconds", "Shortest sync in the reservoir.", SYNC)
    stddev = _gauge("bitbucket_mirror_node_sync_duration_stddev_seconds", "Standard deviation of sync durations.", SYNC)
    rate = _gauge(
        "bitbucket_mirror_node_sync_rate",
        "Syncs per second, one-minute exponentially weighted moving average (the timer's OneMinuteRate).",
        SYNC,
    )
    for node in nodes:
        if node.reading is None:
            continue
        for kind, timer in sorted(node.reading.timers.items()):
            sync = [*node.labels, kind]
            if timer.count is not None:
                syncs.add_metric(sync, timer.count)
            if timer.rate_per_second is not None:
                rate.add_metric(sync, timer.rate_per_second)
            sync_labels = dict(zip(SYNC, sync, strict=True))
            for quantile, seconds in sorted(timer.quantiles.items(), key=lambda item: float(item[0])):
                quantiles.add_sample(quantiles.name, {**sync_labels, "quantile": quantile}, seconds)
            if timer.count is not None and timer.quantiles:
                quantiles.add_sample(quantiles.name + "_count", sync_labels, timer.count)
            for family, value in (
                (mean, timer.mean),
                (maximum, timer.max),
                (minimum, timer.min),
                (stddev, timer.stddev),
            ):
                if value is not None:
                    family.add_metric(sync, value)
    yield from (syncs, quantiles, mean, maximum, minimum, stddev, rate)


def _beans(nodes: list[Node]) -> Iterator[Metric]:
    """What else the node's JMX query found: ticket beans, how many beans matched, and which bean each timer is."""
    tickets = _gauge(
        "bitbucket_mirror_node_tickets",
        "Numeric attributes of the node's ticket MBeans (hosting tickets), by the bean's name and attribute.",
        [*NODE, "resource", "attribute"],
    )
    beans = _gauge(
        "bitbucket_mirror_node_jmx_beans",
        "MBeans the node's JMX query (jmx.object_names) returned; 0 means the patterns found nothing.",
        NODE,
    )
    chosen = InfoMetricFamily(
        "bitbucket_mirror_node_jmx_bean",
        "The ObjectName of the timer read for each sync kind; pin it in jmx.object_names to query less.",
        labels=[*NODE, "kind"],
    )
    for node in nodes:
        if node.reading is None:
            continue
        beans.add_metric(node.labels, node.reading.beans)
        for kind, timer in sorted(node.reading.timers.items()):
            chosen.add_metric([*node.labels, kind], {"object_name": timer.object_name})
        for ticket in node.reading.tickets:
            tickets.add_metric([*node.labels, ticket.resource, ticket.attribute], ticket.value)
    yield from (tickets, beans, chosen)
