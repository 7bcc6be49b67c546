"""Exporter health: can the exporter read every Bitbucket endpoint and JMX node, how long does it take, what fails."""

from __future__ import annotations

from grafanalib import core as g

from alerts.rules import JMX_NODES_DOWN
from dashboards.common import EXPORTER_HEALTH_UID
from dashboards.common import dashboard as make_dashboard
from dashboards.panels import (
    TARGET,
    UP_MAPPING,
    UP_THRESHOLDS,
    VALUE,
    ZERO_IS_GOOD,
    Column,
    Grid,
    Query,
    mirror_sel,
    rate,
    sel,
    stat,
    table,
    timeseries,
)

UID = EXPORTER_HEALTH_UID
SOURCE = "target, source"


def poll(metric: str) -> str:
    return sel(metric, TARGET)


def age(metric: str) -> str:
    return f"time() - {metric}"


def sources_table() -> g.Table:
    labels = [Column("target", "Target", "string"), Column("source", "Source", "string")]
    values = [
        (
            Query(f"max by ({SOURCE}) ({poll('bitbucket_mirror_exporter_poll_success')})"),
            Column(VALUE, "Last poll", "none", UP_THRESHOLDS, UP_MAPPING),
        ),
        (
            Query(f"max by ({SOURCE}) ({poll('bitbucket_mirror_exporter_poll_duration_seconds')})"),
            Column(VALUE, "Duration", "s"),
        ),
        (
            Query(f"max by ({SOURCE}) ({age(poll('bitbucket_mirror_exporter_last_success_timestamp_seconds'))})"),
            Column(VALUE, "Data age", "s"),
        ),
    ]
    return table(
        "Sources",
        "Each Bitbucket endpoint the exporter polls: whether the last poll succeeded, how long it took, and the age "
        "of the values it serves (a failed poll keeps the last good values).",
        labels,
        values,
        sort_by="Data age",
    )


def dashboard() -> g.Dashboard:
    grid = Grid()
    grid.line(
        [
            stat(
                "Exporter scrape",
                "Whether Prometheus can scrape the exporter (BitbucketMirrorExporterDown).",
                Query(f"min({sel('up')})"),
                "none",
                UP_THRESHOLDS,
                UP_MAPPING,
            ),
            stat(
                "Sources failing",
                "Bitbucket endpoints whose last poll failed; their metrics are stale.",
                Query(f"count({poll('bitbucket_mirror_exporter_poll_success')} == 0) or vector(0)"),
                "short",
                ZERO_IS_GOOD,
            ),
            stat(
                "Oldest data",
                "The age of the stalest values the exporter serves, over all sources.",
                Query(f"max({age(poll('bitbucket_mirror_exporter_last_success_timestamp_seconds'))})"),
                "s",
            ),
            stat(
                "JMX nodes down",
                "Mirror nodes whose last JMX poll failed (BitbucketMirrorJmxDown).",
                Query(f"sum({mirror_sel(JMX_NODES_DOWN)}) or vector(0)"),
                "short",
                ZERO_IS_GOOD,
            ),
        ],
        height=4,
    )
    grid.add(sources_table(), 24, 9)
    grid.row("REST polls")
    grid.line(
        [
            timeseries(
                "Poll errors by reason",
                "Failed polls per second by target, source and reason (timeout, connection, tls, http_<status>, "
                "html_response, invalid_json, invalid_response, page_loop, page_cap). One count per failed poll, "
                "after retries.",
                [
                    Query(
                        f"sum by ({SOURCE}, reason) ({rate(poll('bitbucket_mirror_exporter_poll_errors_total'))})",
                        "{{target}} {{source}} {{reason}}",
                    )
                ],
                "cps",
            ),
            timeseries(
                "Poll duration",
                "How long the last poll of each source took, retries and all pages included.",
                [Query(poll("bitbucket_mirror_exporter_poll_duration_seconds"), "{{target}} {{source}}")],
                "s",
            ),
            timeseries(
                "Data age",
                "Seconds since each source was last polled successfully.",
                [
                    Query(
                        age(poll("bitbucket_mirror_exporter_last_success_timestamp_seconds")),
                        "{{target}} {{source}}",
                    )
                ],
                "s",
            ),
        ],
        height=8,
    )
    grid.row("JMX polls")
    grid.line(
        [
            timeseries(
                "JMX up",
                "1 while the node's last JMX poll succeeded.",
                [Query(mirror_sel("bitbucket_mirror_jmx_up"), "{{mirror}}/{{node}}")],
                "none",
                max_value=1,
            ),
            timeseries(
                "JMX poll errors by reason",
                "Failed JMX polls per second by node and reason (timeout, connection, auth, bad_query, java_missing, "
                "java_failed, invalid_output, jmx_error).",
                [
                    Query(
                        f"sum by (mirror, node, reason) "
                        f"({rate(mirror_sel('bitbucket_mirror_exporter_jmx_poll_errors_total'))})",
                        "{{mirror}}/{{node}} {{reason}}",
                    )
                ],
                "cps",
            ),
            timeseries(
                "JMX poll duration",
                "How long the last JMX poll of each node took, JVM start included.",
                [Query(mirror_sel("bitbucket_mirror_exporter_jmx_poll_duration_seconds"), "{{mirror}}/{{node}}")],
                "s",
            ),
        ],
        height=8,
    )
    grid.row("Exporter process")
    grid.line(
        [
            timeseries(
                "Memory",
                "Resident memory of the exporter process.",
                [Query(sel("process_resident_memory_bytes"), "{{instance}}")],
                "bytes",
            ),
            timeseries(
                "CPU",
                "CPU the exporter process uses, as a share of one core.",
                [Query(rate(sel("process_cpu_seconds_total")), "{{instance}}")],
                "percentunit",
            ),
            timeseries(
                "Scrape duration",
                "How long Prometheus takes to scrape the exporter. Scrapes never wait on Bitbucket, so this stays "
                "small whatever Bitbucket does.",
                [Query(sel("scrape_duration_seconds"), "{{instance}}")],
                "s",
            ),
        ],
        height=7,
    )
    return make_dashboard(
        "Bitbucket mirror exporter health",
        UID,
        "Whether the exporter can read every Bitbucket endpoint and mirror node, how long its polls take, and why "
        "they fail.",
        grid.panels,
    )
