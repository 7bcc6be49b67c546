"""What every dashboard shares: the variables, the links between the four, tags, time range and schema version."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grafanalib import core as g

from dashboards import variables

# Every dashboard's uid, in one place: links between dashboards (the overview table's) use these.
OVERVIEW_UID = "bbmirror-overview"
REPOSITORY_DRIFT_UID = "bbmirror-repository-drift"
SYNC_PERFORMANCE_UID = "bbmirror-sync-performance"
EXPORTER_HEALTH_UID = "bbmirror-exporter-health"
GIT_MIRRORS_UID = "bbmirror-git-mirrors"
SLO_UID = "bbmirror-slo"

TAG = "bitbucket-mirror"
TAGS = ["bitbucket", TAG]
# Grafana 11's dashboard schema version; Grafana migrates older JSON on load, newer Grafana reads this as is.
SCHEMA_VERSION = 39


def dashboard(
    title: str,
    uid: str,
    description: str,
    grid_panels: list[Any],
    extra: Sequence[g.Template] = (),
    by_mirror: bool = True,
) -> g.Dashboard:
    """``by_mirror`` False: a dashboard of no Bitbucket mirror (git reference mirrors), without the mirror variable."""
    return g.Dashboard(
        title=title,
        uid=uid,
        description=description,
        tags=TAGS,
        panels=grid_panels,
        templating=g.Templating(
            [
                variables.datasource(),
                variables.cluster(),
                variables.job(),
                *([variables.mirror()] if by_mirror else []),
                *extra,
                variables.runbooks(),
            ]
        ),
        links=[
            g.DashboardLink(
                title="Bitbucket mirror dashboards",
                type="dashboards",
                tags=[TAG],
                asDropdown=False,
                includeVars=True,
                keepTime=True,
                icon="dashboard",
            )
        ],
        time=g.Time("now-6h", "now"),
        refresh="1m",
        timezone="browser",
        graphTooltip=g.GRAPH_TOOLTIP_MODE_SHARED_CROSSHAIR,
        schemaVersion=SCHEMA_VERSION,
        editable=True,
    ).auto_panel_ids()
