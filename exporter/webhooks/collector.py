"""The webhooks' metric families: push-to-sync latency, unconfirmed pushes, and the receiver's own counts."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.webhooks.gate import Gate
from exporter.webhooks.receiver import KNOWN_EVENTS, Receiver
from exporter.webhooks.setup import OUTCOMES, Delivery

RECEIVED = " From Bitbucket's webhooks as they arrive (not polled)."


def webhook_metrics(receiver: Receiver, deliveries: list[Delivery] | None = None) -> Iterator[Metric]:
    """The receiver's families; and, with ``deliveries`` (webhooks.statistics_projects, while fresh), Bitbucket's
    own record of delivering the exporter's webhooks."""
    book = receiver.book
    latency = HistogramMetricFamily(
        "bitbucket_mirror_push_to_sync_seconds",
        "Time from a push reaching the primary (repo:refs_changed) to a mirror having it (mirror:repo_synchronized), "
        "both dated on the primary's clock in whole seconds; by the sync type the mirror reported." + RECEIVED,
        labels=["mirror", "sync"],
    )
    for (mirror, sync), histogram in sorted(book.histograms.items()):
        latency.add_metric([mirror, sync], histogram.cumulative(), histogram.total)
    unconfirmed = CounterMetricFamily(
        "bitbucket_mirror_push_unconfirmed",
        "Pushes the mirror did not confirm (mirror:repo_synchronized) within webhooks.pending_timeout_seconds."
        + RECEIVED,
        labels=["mirror"],
    )
    for mirror, count in sorted(book.unconfirmed.items()):
        unconfirmed.add_metric([mirror], count)
    requests = CounterMetricFamily(
        "bitbucket_mirror_webhook_requests",
        "Webhook deliveries received, by event (repo:refs_changed, mirror:repo_synchronized, diagnostics:ping, "
        "other) and outcome (accepted, replayed, unknown_event, bad_signature, too_large, too_slow, malformed, "
        "secret_unreadable).",
        labels=["event", "outcome"],
    )
    for (event, outcome), count in sorted(receiver.requests.items()):
        requests.add_metric([event, outcome], count)
    last = GaugeMetricFamily(
        "bitbucket_mirror_webhook_last_received_timestamp_seconds",
        "When a delivery of the event was last accepted, as a Unix timestamp.",
        labels=["event"],
    )
    for event in KNOWN_EVENTS:
        if event in receiver.last_received:
            last.add_metric([event], receiver.last_received[event])
    pending = GaugeMetricFamily(
        "bitbucket_mirror_webhook_pending_pushes",
        "Pushes waiting for some monitored mirror's confirmation (at most webhooks.max_pending).",
    )
    pending.add_metric([], book.pending)
    evicted = CounterMetricFamily(
        "bitbucket_mirror_webhook_pending_evicted",
        "Pending pushes forgotten because webhooks.max_pending was reached (a flood, or mirrors that never confirm).",
    )
    evicted.add_metric([], book.evicted)
    yield from (latency, unconfirmed, requests, last, pending, evicted)
    yield from delivery_metrics(deliveries or [])


def delivery_metrics(deliveries: list[Delivery]) -> Iterator[Metric]:
    """Bitbucket's own record of delivering the exporter's webhooks: per webhook (scope and URL) and event, the
    outcomes counted in its statistics' current window and when the latest invocation of each outcome started."""
    source = (
        " From Bitbucket's webhook statistics (summary and latest invocations), read every "
        "webhooks.statistics_interval_seconds for webhooks.statistics_projects."
    )
    counts = GaugeMetricFamily(
        "bitbucket_mirror_webhook_deliveries",
        "Deliveries of the exporter's webhook in Bitbucket's current statistics window, by the webhook's scope "
        "(project or project/repository) and URL, event and outcome (success: a 2xx answer; failure: any other "
        "answer; error: none, e.g. refused or timed out)." + source,
        labels=["scope", "url", "event", "outcome"],
    )
    last = {
        outcome: GaugeMetricFamily(
            f"bitbucket_mirror_webhook_delivery_last_{outcome}_timestamp_seconds",
            f"When Bitbucket's latest invocation of the exporter's webhook with outcome {outcome} started, by scope, "
            "URL and event, as a Unix timestamp on the primary's clock." + source,
            labels=["scope", "url", "event"],
        )
        for outcome in OUTCOMES.values()
    }
    for delivery in deliveries:
        for event in delivery.events:
            for outcome in OUTCOMES.values():
                if outcome in event.counts:
                    counts.add_metric([delivery.scope, delivery.url, event.event, outcome], event.counts[outcome])
                if outcome in event.last:
                    last[outcome].add_metric([delivery.scope, delivery.url, event.event], event.last[outcome])
    yield counts
    yield from last.values()


def gate_metrics(gate: Gate) -> Iterator[Metric]:
    """What the CI gate answered, and how long pipelines waited for their yes."""
    requests = CounterMetricFamily(
        "bitbucket_mirror_gate_requests",
        "Questions to the CI gate, by outcome: on_mirror (on every mirror asked about), not_yet, unknown_commit (the "
        "primary has no such commit), error (an unknown repository, or the primary could not be asked).",
        labels=["outcome"],
    )
    for outcome, count in gate.requests.items():
        requests.add_metric([outcome], count)
    waits = HistogramMetricFamily(
        "bitbucket_mirror_gate_wait_seconds",
        "Time from the first question about a commit and mirror to the gate's first yes for them: what waiting for "
        "mirrors costs the CI fleet.",
    )
    waits.add_metric([], gate.waits.cumulative(), gate.waits.total)
    yield from (requests, waits)


class WebhookCollector(Collector):
    """The webhooks' families while webhooks are configured (``enabled``), with Bitbucket's delivery statistics while
    fresh (``deliveries``, None otherwise)."""

    def __init__(
        self, enabled: Callable[[], bool], receiver: Receiver, deliveries: Callable[[], list[Delivery] | None]
    ) -> None:
        self._enabled = enabled
        self._receiver = receiver
        self._deliveries = deliveries

    def collect(self) -> Iterator[Metric]:
        if self._enabled():
            yield from webhook_metrics(self._receiver, self._deliveries())


class GateCollector(Collector):
    """The CI gate's own numbers."""

    def __init__(self, gate: Gate) -> None:
        self._gate = gate

    def collect(self) -> Iterator[Metric]:
        yield from gate_metrics(self._gate)
