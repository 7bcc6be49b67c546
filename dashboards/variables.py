"""The dashboard variables: a Prometheus data source, an optional cluster, the exporter's jobs and the mirrors
(multi-select, All by default), and where the runbooks are; the drift and sync performance dashboards add mirror
nodes."""

from __future__ import annotations

from grafanalib import core as g

from alerts.rules import AlertConfig
from dashboards.panels import CLUSTER, DATASOURCE, JOB, MIRROR

# "All" as a regex rather than Grafana's list of the values it knows: mirrors that only the primary lists (not
# configured in the exporter) and nodes that join later still match.
ALL = ".+"
# A cluster is optional: "All" must also match series that have no cluster label.
ANY = ".*"
RUNBOOKS = "runbooks"


def datasource() -> g.Template:
    return g.Template(name="datasource", label="Data source", query="prometheus", type="datasource", default="")


def _query(name: str, label: str, query: str, multi: bool, all_value: str = ALL) -> g.Template:
    return g.Template(
        name=name,
        label=label,
        query=query,
        dataSource=DATASOURCE,
        refresh=g.REFRESH_ON_TIME_RANGE_CHANGE,
        multi=multi,
        includeAll=multi,
        allValue=all_value if multi else None,
        default="$__all" if multi else "",
        sort=g.SORT_ALPHA_IGNORE_CASE_ASC,
    )


def cluster() -> g.Template:
    return _query(
        "cluster", "Cluster", "label_values(bitbucket_mirror_exporter_build_info, cluster)", multi=True, all_value=ANY
    )


def job() -> g.Template:
    # Several exporters (one per farm, or an HA pair) may be looked at together.
    return _query("job", "Job", f"label_values(bitbucket_mirror_exporter_build_info{{{CLUSTER}}}, job)", multi=True)


def mirror() -> g.Template:
    return _query("mirror", "Mirror", f"label_values(bitbucket_mirror_up{{{CLUSTER}, {JOB}}}, mirror)", multi=True)


def node() -> g.Template:
    """Mirror nodes, whether read node by node over REST or over JMX (either path)."""
    names = '__name__=~"bitbucket_mirror_node_up|bitbucket_mirror_jmx_up"'
    query = f"label_values({{{names}, {CLUSTER}, {JOB}, {MIRROR}}}, node)"
    return _query("node", "Node", query, multi=True)


def git_mirror() -> g.Template:
    query = f"label_values(bitbucket_mirror_git_last_check_success_timestamp_seconds{{{CLUSTER}, {JOB}}}, git_mirror)"
    return _query("git_mirror", "Git mirror", query, multi=True)


def runbooks() -> g.Template:
    """Where the runbook links of alert-backed panels point: the alert rules' runbook_url (the exporter serves the
    runbooks at /runbooks); change it here as in the rules."""
    return g.Template(
        name=RUNBOOKS,
        label="Runbooks",
        type="textbox",
        query=AlertConfig().runbook_url,
        default=AlertConfig().runbook_url,
    )


def objective(name: str, default: str) -> g.Template:
    """An SLO's objective, as the rules have it (slo_*_objective): the budget panels divide by 1 minus it."""
    return g.Template(
        name=name, label=name.replace("_", " ").capitalize(), type="textbox", query=default, default=default
    )
