"""Building blocks shared by the dashboards: selectors scoped to the dashboard variables, the Prometheus query,
panels that always carry a unit, and a grid that places panels without overlap.

Every selector goes through ``sel`` so that each query is filtered by ``$job`` (and by ``$mirror`` for metrics that
have a mirror); tests/test_dashboards.py checks that no query escapes this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import attr
from grafanalib import core as g

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Optional: Prometheus setups that label each cluster's series with `cluster` pick one; "All" (.*) also matches series
# without the label.
CLUSTER = 'cluster=~"$cluster"'
JOB = 'job=~"$job"'
MIRROR = 'mirror=~"$mirror"'
NODE = 'node=~"$node"'
GIT_MIRROR = 'git_mirror=~"$git_mirror"'
# The exporter's own poll metrics say `target` (primary or a mirror name) where the others say `mirror`.
TARGET = 'target=~"primary|$mirror"'
RATE_WINDOW = "[$__rate_interval]"


def sel(metric: str, *matchers: str) -> str:
    """``metric{cluster=~"$cluster", job=~"$job", ...}``: a selector scoped to the dashboard's cluster and job."""
    return f"{metric}{{{', '.join((CLUSTER, JOB, *matchers))}}}"


def mirror_sel(metric: str, *matchers: str) -> str:
    """A selector scoped to the dashboard's job and mirrors."""
    return sel(metric, MIRROR, *matchers)


def node_sel(metric: str, *matchers: str) -> str:
    """A selector scoped to the dashboard's job, mirrors and nodes."""
    return mirror_sel(metric, NODE, *matchers)


def nodes_ahead_of_peers(selector: str, best: str) -> str:
    """Per node, how many more repositories it has in content drift than the best node of its mirror (``best``, the
    recorded minimum): what BitbucketMirrorNodeBehind alerts on (0 for the best node)."""
    return f"{selector} - ignoring (node) group_left {best}"


PUSH_TO_SYNC_NOTE = (
    "Time from a push reaching the primary to each mirror having it (Bitbucket's webhooks, docs/webhooks.md): p50, "
    "p90 and p99 per mirror. Dashed line: BitbucketMirrorPushToSyncSlow for the p90. Empty without webhooks."
)


def push_to_sync_quantiles(by: str = "mirror") -> list[Query]:
    """Quantiles of the time from a push to each mirror, from the webhooks' histogram."""
    buckets = rate(mirror_sel("bitbucket_mirror_push_to_sync_seconds_bucket"))
    legend = " ".join("{{" + label.strip() + "}}" for label in by.split(","))
    return [
        Query(f"histogram_quantile({q}, sum by ({by}, le) ({buckets}))", f"{legend} p{round(q * 100)}")
        for q in (0.5, 0.9, 0.99)
    ]


def rate(selector: str) -> str:
    return f"rate({selector}{RATE_WINDOW})"


@dataclass(frozen=True)
class Query:
    """One PromQL query of a panel. ``instant`` queries read the latest value only (tables and stats);
    ``table`` asks Grafana for one row per series, as tables need."""

    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False

    def target(self, ref_id: str) -> dict[str, Any]:
        target: dict[str, Any] = {
            "datasource": DATASOURCE,
            "expr": self.expr,
            "refId": ref_id,
            "instant": self.instant,
            "range": not self.instant,
        }
        if self.legend:
            target["legendFormat"] = self.legend
        if self.table:
            target["format"] = "table"
        return target


REF_IDS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def targets(queries: Sequence[Query]) -> list[dict[str, Any]]:
    return [q.target(ref_id) for ref_id, q in zip(REF_IDS, queries, strict=False)]


def steps(*levels: tuple[str, float | None]) -> list[dict[str, Any]]:
    """Threshold steps: the first colour applies from minus infinity (``None``), each next one from its value."""
    return [{"color": color, "value": value} for color, value in levels]


GREEN = steps(("green", None))
# Anything above zero deserves a look (drift, failing repositories, errors).
ZERO_IS_GOOD = steps(("green", None), ("orange", 1))
UP_MAPPING = [
    {
        "type": "value",
        "options": {
            "0": {"text": "DOWN", "color": "red", "index": 0},
            "1": {"text": "UP", "color": "green", "index": 1},
        },
    }
]
UP_THRESHOLDS = steps(("red", None), ("green", 1))


def timeseries(
    title: str,
    description: str,
    queries: Sequence[Query],
    unit: str,
    thresholds: list[dict[str, Any]] | None = None,
    max_value: int | None = None,
) -> g.TimeSeries:
    """A time series panel; with ``thresholds`` they are drawn as dashed lines, as the alert rules' limits."""
    return g.TimeSeries(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=targets(queries),
        unit=unit,
        thresholds=thresholds or GREEN,
        thresholdsStyleMode="dashed" if thresholds else "off",
        # Every series here is a count, a duration or an age: never below zero.
        valueMin=0,
        valueMax=max_value,
        stacking={"mode": "none", "group": "A"},
        showPoints="never",
        legendDisplayMode="table",
        legendPlacement="right" if len(queries) > 1 else "bottom",
        legendCalcs=["lastNotNull", "max"],
        tooltipMode="multi",
        tooltipSort="desc",
    )


def stat(
    title: str,
    description: str,
    query: Query,
    unit: str,
    thresholds: list[dict[str, Any]] | None = None,
    mappings: list[dict[str, Any]] | None = None,
) -> g.Stat:
    """A single figure, coloured by thresholds, from an instant query."""
    return g.Stat(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=targets([replace(query, instant=True)]),
        format=unit,
        thresholds=thresholds or GREEN,
        mappings=mappings or [],
        colorMode="background",
        graphMode="none",
        reduceCalc="lastNotNull",
        # Never 0 for missing data: a stat of a stopped exporter must not look healthy.
        noValue="No data",
    )


# The source of a value column: table() replaces it by the value field of the column's own query.
VALUE = "Value"


@dataclass(frozen=True)
class Column:
    """One column of a table: ``source`` is a label name, or VALUE for a query's value (see ``table``); thresholds
    colour the cell."""

    source: str
    title: str
    unit: str = "short"
    thresholds: list[dict[str, Any]] | None = None
    mappings: list[dict[str, Any]] = field(default_factory=list)
    link: dict[str, Any] | None = None

    def override(self) -> dict[str, Any]:
        properties: list[dict[str, Any]] = [{"id": "unit", "value": self.unit}]
        if self.thresholds:
            properties.append({"id": "thresholds", "value": {"mode": "absolute", "steps": self.thresholds}})
            properties.append({"id": "custom.cellOptions", "value": {"type": "color-background"}})
        if self.mappings:
            properties.append({"id": "mappings", "value": self.mappings})
        if self.link:
            properties.append({"id": "links", "value": [self.link]})
        return {"matcher": {"id": "byName", "options": self.title}, "properties": properties}


def table(
    title: str,
    description: str,
    labels: Sequence[Column],
    values: Sequence[tuple[Query, Column | None]],
    sort_by: str,
) -> g.Table:
    """Instant queries joined on their labels into one table (Grafana's merge). ``labels`` are the label columns,
    first; each query comes with the column that shows its value (None: it only supplies labels), so adding a query
    cannot shift another's column. Anything not listed (Time, a label-only query's value) is left out."""
    columns = list(labels)
    for ref_id, (_, column) in zip(REF_IDS, values, strict=False):
        if column is not None:
            columns.append(replace(column, source=VALUE if len(values) == 1 else f"{VALUE} #{ref_id}"))
    shown = [c.source for c in columns]
    organize = {
        "indexByName": {name: i for i, name in enumerate(shown)},
        "renameByName": {c.source: c.title for c in columns},
    }
    return g.Table(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=targets([replace(q, instant=True, table=True) for q, _ in values]),
        transformations=[
            {"id": "merge", "options": {}},
            {"id": "filterFieldsByName", "options": {"include": {"names": shown}}},
            {"id": "organize", "options": organize},
        ],
        overrides=[c.override() for c in columns],
        thresholds=GREEN,
        unit="short",
        filterable=True,
        sortBy=[g.TableSortByField(displayName=sort_by, desc=True)],
    )


class Grid:
    """Places panels left to right in Grafana's 24-column grid, wrapping to a new line when a panel does not fit."""

    WIDTH = 24

    def __init__(self) -> None:
        self.panels: list[Any] = []
        self._x = 0
        self._y = 0
        self._line_height = 0

    def _newline(self) -> None:
        self._y += self._line_height
        self._x = 0
        self._line_height = 0

    def add(self, panel: Any, width: int, height: int) -> Grid:
        if self._x + width > self.WIDTH:
            self._newline()
        self.panels.append(attr.evolve(panel, gridPos=g.GridPos(h=height, w=width, x=self._x, y=self._y)))
        self._x += width
        self._line_height = max(self._line_height, height)
        return self

    def row(self, title: str) -> Grid:
        self._newline()
        return self.add(g.RowPanel(title=title), self.WIDTH, 1)

    def line(self, panels: Sequence[Any], height: int) -> Grid:
        """Panels sharing one line of the grid equally."""
        self._newline()
        width = self.WIDTH // len(panels)
        for panel in panels:
            self.add(panel, width, height)
        return self


@attr.s
class AlertList(g.Panel):  # type: ignore[misc]
    """Grafana's alert list panel in its unified-alerting shape (grafanalib's AlertList writes the legacy one): the
    alerts of the data source's rules whose labels match ``label_filter``, firing or pending."""

    label_filter: str = attr.ib(default="")

    def to_json_data(self) -> dict[str, Any]:
        options = {
            "viewMode": "list",
            "groupMode": "default",
            "groupBy": [],
            "maxItems": 20,
            "sortOrder": 1,
            "dashboardAlerts": False,
            "alertName": "",
            "alertInstanceLabelFilter": self.label_filter,
            "datasource": "${datasource}",
            "stateFilter": {"firing": True, "pending": True, "noData": False, "normal": False, "error": True},
        }
        data: dict[str, Any] = self.panel_json({"type": "alertlist", "options": options})
        return data
