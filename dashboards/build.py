"""Turns the grafanalib dashboards into the committed JSON: Grafana's current JSON model, with the legacy keys
grafanalib still writes removed."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafanalib import core as g
from grafanalib._gen import DashboardEncoder

from alerts.rules import alert_names
from dashboards import exporter_health, git_mirrors, overview, repository_drift, slo, sync_performance
from dashboards.variables import RUNBOOKS

GENERATED = Path(__file__).parent / "generated"

# Keys grafanalib writes for Grafana 7 and older (graph-era panels, old rows, dashboard style) that today's
# dashboard schema no longer has. Grafana ignores them; they are dropped to keep the JSON in the current model, and
# tests/test_dashboards.py checks that nothing else outside that model is left.
LEGACY_DASHBOARD_KEYS = {"__inputs", "hideControls", "rows", "sharedCrosshair", "style"}
LEGACY_PANEL_KEYS = {"color", "columns", "editable", "error", "fontSize", "mappings"}
# A row is a layout element only: no queries, data options or looks.
ROW_ONLY_KEYS = {"collapsed", "gridPos", "id", "panels", "title", "type"}
LEGACY_TEMPLATE_KEYS = {"useTags"}


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        # A threshold's first step has value null on purpose: it starts at minus infinity.
        return {k: _drop_none(v) for k, v in value.items() if v is not None or k == "value"}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def _without(mapping: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k not in keys}


def runbook_links(description: str) -> list[dict[str, Any]]:
    """A link to the runbook of each alert the panel's description names: the alert-backed panels."""
    named = [name for name in alert_names() if re.search(rf"\b{name}\b", description)]
    return [
        {"title": f"Runbook: {name}", "url": f"${{{RUNBOOKS}}}#{name.lower()}", "targetBlank": True} for name in named
    ]


def _panel(panel: dict[str, Any]) -> dict[str, Any]:
    panel = _without(panel, LEGACY_PANEL_KEYS)
    if panel["type"] != "row" and (links := runbook_links(panel.get("description", ""))):
        panel["links"] = [*panel.get("links", []), *links]
    if panel["type"] == "row":
        panel = {k: v for k, v in panel.items() if k in ROW_ONLY_KEYS}
        panel["panels"] = [_panel(p) for p in panel["panels"]]
    elif panel["type"] == "table":
        # Grafana 10 replaced the table's custom.displayMode by cellOptions.
        custom = panel["fieldConfig"]["defaults"]["custom"]
        custom["cellOptions"] = {"type": "auto"}
        del custom["displayMode"]
    return panel


def _template(template: dict[str, Any]) -> dict[str, Any]:
    template = _without(template, LEGACY_TEMPLATE_KEYS)
    current = template["current"]
    current.pop("tags", None)
    if current["value"] == "$__all":
        current["text"] = "All"
    return template


def to_json(dash: g.Dashboard) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(dash.to_json_data(), cls=DashboardEncoder))
    data = _without(_drop_none(data), LEGACY_DASHBOARD_KEYS)
    data["panels"] = [_panel(p) for p in data["panels"]]
    data["templating"]["list"] = [_template(t) for t in data["templating"]["list"]]
    del data["timepicker"]["time_options"]
    return data


def render(dash: g.Dashboard) -> str:
    return json.dumps(to_json(dash), indent=2, sort_keys=True) + "\n"


def all_dashboards() -> dict[str, Callable[[], g.Dashboard]]:
    """File name -> builder, for every dashboard."""
    return {
        "mirror-farm-overview.json": overview.dashboard,
        "repository-drift.json": repository_drift.dashboard,
        "sync-performance.json": sync_performance.dashboard,
        "exporter-health.json": exporter_health.dashboard,
        "git-mirrors.json": git_mirrors.dashboard,
        "freshness-slo.json": slo.dashboard,
    }


def rendered() -> dict[str, str]:
    return {name: render(build()) for name, build in all_dashboards().items()}


def alert_panels(dashboards: list[dict[str, Any]]) -> dict[str, tuple[str, int]]:
    """Each alert's panel: the first, in ``dashboards``' order, whose description names it (the panels that carry
    its runbook link), as (dashboard uid, panel id)."""
    found: dict[str, tuple[str, int]] = {}

    def walk(panels: list[dict[str, Any]]) -> Any:
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))

    for dash in dashboards:
        for panel in walk(dash["panels"]):
            for name in alert_names():
                if name not in found and re.search(rf"\b{name}\b", panel.get("description", "")):
                    found[name] = (dash["uid"], panel["id"])
    return dict(sorted(found.items()))


def panels_module(panels: dict[str, tuple[str, int]]) -> str:
    """alerts/panels.py, as scripts/generate writes it."""
    rows = "".join(f'    "{name}": ("{uid}", {panel}),\n' for name, (uid, panel) in panels.items())
    return (
        '"""Generated by scripts/generate from dashboards/: each alert\'s panel, the first (overview first) whose '
        "description\nnames it, as (dashboard uid, panel id); alerts/rules.py links it as ``dashboard_url``. Do not "
        'edit by hand."""\n\n'
        f"PANELS: dict[str, tuple[str, int]] = {{\n{rows}}}\n"
    )
