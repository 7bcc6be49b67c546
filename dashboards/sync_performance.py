"""Sync performance: how fast and how often each mirror node syncs, from its JMX timers (mirrors with ``jmx`` only),
read over JMX or from the nodes' jmx_exporter pages: both give the same series."""

from __future__ import annotations

from grafanalib import core as g

from dashboards import thresholds as t
from dashboards import variables
from dashboards.common import SYNC_PERFORMANCE_UID
from dashboards.common import dashboard as make_dashboard
from dashboards.panels import (
    PUSH_TO_SYNC_NOTE,
    Grid,
    Query,
    mirror_sel,
    node_sel,
    push_to_sync_quantiles,
    rate,
    sel,
    timeseries,
)

UID = SYNC_PERFORMANCE_UID
NODE_LEGEND = "{{mirror}}/{{node}}"
# The quantiles worth a line each; the timers also report 0.75, 0.98 and 0.999.
QUANTILES = "0.5|0.95|0.99"


def sync_rate(kind: str, per: int, unit_name: str) -> list[Query]:
    """Syncs per second (or per hour), from the timer's count and from the node's own one-minute rate."""
    sync = f'sync="{kind}"'
    scale = f" * {per}" if per != 1 else ""
    return [
        Query(f"sum by (mirror, node) ({rate(node_sel('bitbucket_mirror_node_syncs_total', sync))}){scale}",
              f"{NODE_LEGEND} {unit_name}"),
        Query(f"{node_sel('bitbucket_mirror_node_sync_rate', sync)}{scale}", f"{NODE_LEGEND} {unit_name} (node, 1m)"),
    ]  # fmt: skip


def durations(kind: str) -> list[Query]:
    sync = f'sync="{kind}"'
    return [
        Query(
            node_sel("bitbucket_mirror_node_sync_duration_seconds", sync, f'quantile=~"{QUANTILES}"'),
            f"{NODE_LEGEND} p{{{{quantile}}}}",
        ),
        Query(node_sel("bitbucket_mirror_node_sync_duration_max_seconds", sync), f"{NODE_LEGEND} max"),
    ]


QUANTILE_NOTE = (
    "Quantiles come from each node's decaying reservoir (recent syncs weigh more); compare nodes, never average them."
)


def dashboard() -> g.Dashboard:
    grid = Grid()
    grid.row("Push to mirror")
    grid.line(
        [
            timeseries("Push to mirror", PUSH_TO_SYNC_NOTE, push_to_sync_quantiles(), "s", t.PUSH_TO_SYNC),
            timeseries(
                "Push to mirror by sync type",
                "The same by the sync type the mirror reported: snapshot syncs fetch everything and take longer.",
                push_to_sync_quantiles("mirror, sync"),
                "s",
                t.PUSH_TO_SYNC,
            ),
        ],
        height=8,
    )
    grid.row("Incremental syncs")
    grid.line(
        [
            timeseries(
                "Incremental syncs per second",
                "Incremental syncs (one per pushed ref change) each node completes: from the timer's count, and "
                "the node's own one-minute rate.",
                sync_rate("incremental", 1, "syncs/s"),
                "ops",
            ),
            timeseries(
                "Incremental sync duration",
                f"{QUANTILE_NOTE} Dashed line: BitbucketMirrorSyncSlow for the 0.99 quantile.",
                durations("incremental"),
                "s",
                t.INCREMENTAL_SLOW,
            ),
        ],
        height=8,
    )
    grid.row("Snapshot syncs")
    grid.line(
        [
            timeseries(
                "Snapshot syncs per hour",
                "Full snapshot syncs each node runs, per hour. Many of them mean incremental syncs keep failing over. "
                "Dashed line: BitbucketMirrorSnapshotSyncsFrequent.",
                sync_rate("snapshot", 3600, "syncs/h"),
                "short",
                t.SNAPSHOTS_PER_HOUR,
            ),
            timeseries(
                "Snapshot sync duration",
                f"{QUANTILE_NOTE} Dashed line: BitbucketMirrorSyncSlow for the 0.99 quantile.",
                durations("snapshot"),
                "s",
                t.SNAPSHOT_SLOW,
            ),
        ],
        height=8,
    )
    grid.row("Farm")
    grid.line(
        [
            timeseries(
                "Farm vet duration",
                f"How long the farm's consistency check (farm vet) takes on each node. {QUANTILE_NOTE}",
                durations("farm_vet"),
                "s",
            ),
            timeseries(
                "Hosting tickets",
                "The node's ticket bean attributes (for example available and used SCM hosting tickets). No "
                "tickets left means clones and syncs queue.",
                [
                    Query(
                        node_sel("bitbucket_mirror_node_tickets"),
                        f"{NODE_LEGEND} {{{{resource}}}} {{{{attribute}}}}",
                    )
                ],
                "short",
            ),
            timeseries(
                "Queued ref changes by sync type",
                "Items in the farm's ref-changes queue dump (REST, not JMX) by the sync they wait for.",
                [Query(mirror_sel("bitbucket_mirror_ref_changes_queue_items"), "{{mirror}} {{sync}}")],
                "short",
            ),
        ],
        height=8,
    )
    grid.row("CI gate")
    gate_buckets = rate(sel("bitbucket_mirror_gate_wait_seconds_bucket"))
    grid.line(
        [
            timeseries(
                "CI gate answers",
                "Questions to the CI gate (`wait`, docs/webhooks.md) per second, by outcome: on_mirror, not_yet, "
                "unknown_commit (the primary has no such commit: a pipeline's typo), error.",
                [Query(f"sum by (outcome) ({rate(sel('bitbucket_mirror_gate_requests_total'))})", "{{outcome}}")],
                "reqps",
            ),
            timeseries(
                "CI wait for a mirror",
                "From a pipeline's first question about a commit and mirror to the gate's first yes: what waiting for "
                "mirrors costs the CI fleet (p50, p90, p99).",
                [
                    Query(f"histogram_quantile({q}, sum by (le) ({gate_buckets}))", f"p{round(q * 100)}")
                    for q in (0.5, 0.9, 0.99)
                ],
                "s",
            ),
            timeseries(
                "Webhooks received",
                "Bitbucket's webhook deliveries the exporter received per second, by event and outcome: push times "
                "and the CI gate's sync events come from them. None while the primary shows pushes is "
                "BitbucketMirrorWebhooksSilent; Bitbucket's own delivery statistics "
                "(bitbucket_mirror_webhook_deliveries, webhooks.statistics_projects) showing only failures is "
                "BitbucketMirrorWebhookDeliveriesFailing.",
                [
                    Query(
                        f"sum by (event, outcome) ({rate(sel('bitbucket_mirror_webhook_requests_total'))})",
                        "{{event}} {{outcome}}",
                    )
                ],
                "reqps",
            ),
        ],
        height=8,
    )
    return make_dashboard(
        "Bitbucket mirror sync performance",
        UID,
        "How fast and how often each Bitbucket mirror node syncs, read from its JMX sync timers.",
        grid.panels,
        extra=[variables.node()],
    )
