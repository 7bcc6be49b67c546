"""The dashboard variables: a Prometheus data source, the exporter's job, and the mirrors (multi-select, All by
default); the sync performance dashboard adds mirror nodes."""

from __future__ import annotations

from grafanalib import core as g

from dashboards.panels import DATASOURCE, JOB, MIRROR

# "All" as a regex rather than Grafana's list of the values it knows: mirrors that only the primary lists (not
# configured in the exporter) and nodes that join later still match.
ALL = ".+"


def datasource() -> g.Template:
    return g.Template(name="datasource", label="Data source", query="prometheus", type="datasource", default="")


def _query(name: str, label: str, query: str, multi: bool) -> g.Template:
    return g.Template(
        name=name,
        label=label,
        query=query,
        dataSource=DATASOURCE,
        refresh=g.REFRESH_ON_TIME_RANGE_CHANGE,
        multi=multi,
        includeAll=multi,
        allValue=ALL if multi else None,
        default="$__all" if multi else "",
        sort=g.SORT_ALPHA_IGNORE_CASE_ASC,
    )


def job() -> g.Template:
    return _query("job", "Job", "label_values(bitbucket_mirror_exporter_build_info, job)", multi=False)


def mirror() -> g.Template:
    return _query("mirror", "Mirror", f"label_values(bitbucket_mirror_up{{{JOB}}}, mirror)", multi=True)


def node() -> g.Template:
    return _query("node", "Node", f"label_values(bitbucket_mirror_jmx_up{{{JOB}, {MIRROR}}}, node)", multi=True)
