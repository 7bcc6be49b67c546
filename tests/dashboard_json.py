"""Reading the generated dashboards: their panels, queries, selectors and variables, for the dashboard tests."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dashboards.build import GENERATED, all_dashboards

DOCS = Path(__file__).parent.parent / "docs" / "metrics.md"
SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")


def generated() -> dict[str, dict[str, Any]]:
    """The committed JSON of every dashboard, by file name."""
    return {name: json.loads((GENERATED / name).read_text()) for name in all_dashboards()}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows and the panels of collapsed rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def data_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Panels that draw the exporter's metrics (not rows, and not the alert list, which reads the rules)."""
    return (p for p in panels(dashboard) if p["type"] not in ("row", "alertlist"))


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: dict[str, Any]
    target: dict[str, Any]

    @property
    def expr(self) -> str:
        expr: str = self.target["expr"]
        return expr

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel['title']} / {self.target['refId']}"


def queries() -> list[PanelQuery]:
    return [
        PanelQuery(name, panel, target)
        for name, dashboard in generated().items()
        for panel in data_panels(dashboard)
        for target in panel["targets"]
    ]


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric, matchers) of every ``metric{...}`` in a PromQL expression."""
    return SELECTOR.findall(expr)


def documented_labels() -> dict[str, set[str]]:
    """Metric name -> its labels, from the tables in docs/metrics.md."""
    labels: dict[str, set[str]] = {}
    for line in DOCS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`bitbucket_mirror_"):
            label_cell = cells[2] if cells[1] in ("gauge", "counter", "summary") else cells[1]
            labels[cells[0].strip("`")] = {label.strip() for label in label_cell.split(",") if label.strip()}
    return labels
