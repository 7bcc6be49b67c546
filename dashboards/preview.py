"""Draws each dashboard as Grafana would lay it out, filled with what its queries return from a real Prometheus:
panel positions, titles, units, threshold colours, stat boxes, table rows and time series. No Grafana server can
be installed here, so this is how anyone sees the dashboards before importing them (docs/dashboards/*.png, made by
``scripts/generate --previews``; tests/test_dashboards_prometheus.py draws them from its own Prometheus).

A sketch, not a Grafana: fonts, legends and tooltips differ; the grid, the data and the colours are the dashboards'.
"""

from __future__ import annotations

import json
import math
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter

COLORS = {"green": "#73bf69", "orange": "#ff9830", "red": "#f2495c", "yellow": "#fade2a", "blue": "#5794f2"}
UNIT_WIDTH, UNIT_HEIGHT = 0.62, 0.42  # inches per grid column / row
RANGE_SECONDS = 600

Query = Callable[[str, bool], list[dict[str, Any]]]


def prometheus_query(base_url: str, range_seconds: float = RANGE_SECONDS) -> Query:
    """(expr, instant) -> Prometheus' result list, over HTTP."""

    def run(expr: str, instant: bool) -> list[dict[str, Any]]:
        now = time.time()
        if instant:
            path, params = "query", {"query": expr, "time": f"{now:.3f}"}
        else:
            step = max(1.0, range_seconds / 120)
            path = "query_range"
            params = {"query": expr, "start": f"{now - range_seconds:.3f}", "end": f"{now:.3f}", "step": f"{step:g}"}
        url = f"{base_url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        result: list[dict[str, Any]] = body["data"]["result"] if body.get("status") == "success" else []
        return result

    return run


def substitute(text: str, variables: Mapping[str, str]) -> str:
    for name, value in variables.items():
        text = text.replace(f"${{{name}}}", value).replace(f"${name}", value)
    return text


def _color(name: str) -> str:
    return COLORS.get(name, name)


def threshold_color(value: float, steps: list[dict[str, Any]]) -> str:
    color = "green"
    for step in steps:
        if step["value"] is None or value >= step["value"]:
            color = step["color"]
    return _color(color)


def fmt(value: float, unit: str, mappings: list[dict[str, Any]] | None = None) -> str:
    for mapping in mappings or []:
        options = mapping.get("options", {})
        key = str(int(value)) if math.isfinite(value) and value == int(value) else str(value)
        if mapping.get("type") == "value" and key in options:
            return str(options[key].get("text", key))
    if not math.isfinite(value):
        return str(value)
    if unit == "s":
        for size, suffix in ((86400, "d"), (3600, "h"), (60, "min")):
            if abs(value) >= size:
                return f"{value / size:.1f} {suffix}"
        return f"{value:.1f} s" if value and abs(value) < 10 else f"{value:.0f} s"
    if unit == "percentunit":
        return f"{value * 100:.0f}%"
    if unit == "bytes":
        return f"{value / 1e6:.1f} MB"
    if unit in ("ops", "reqps"):
        return f"{value:.2g}/s"
    return f"{value:.0f}" if value == int(value) and abs(value) < 1e9 else f"{value:.3g}"


def legend(template: str, labels: Mapping[str, str]) -> str:
    text = template
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", value)
    return text or ", ".join(f"{k}={v}" for k, v in labels.items() if k != "__name__")


def _frame(ax: Axes, panel: dict[str, Any]) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("#cccccc")
    ax.set_title(panel.get("title", ""), loc="left", fontsize=8, fontweight="bold")


def _stat(ax: Axes, panel: dict[str, Any], run: Query, variables: Mapping[str, str]) -> int:
    defaults = panel["fieldConfig"]["defaults"]
    target = panel["targets"][0]
    result = run(substitute(target["expr"], variables), True)
    _frame(ax, panel)
    if not result:
        ax.text(0.5, 0.5, defaults.get("noValue", "No data"), ha="center", va="center", fontsize=10, color="#888888")
        return 0
    width = 1 / len(result)
    for i, series in enumerate(result):
        value = float(series["value"][1])
        color = threshold_color(value, defaults["thresholds"]["steps"])
        ax.add_patch(Rectangle((i * width + 0.01, 0.02), width - 0.02, 0.96, color=color, transform=ax.transAxes))
        text = fmt(value, defaults.get("unit", ""), defaults.get("mappings"))
        ax.text((i + 0.5) * width, 0.45, text, ha="center", va="center", fontsize=13, color="white", weight="bold")
        if target.get("legendFormat"):
            caption = legend(target["legendFormat"], series["metric"])
            ax.text((i + 0.5) * width, 0.85, caption, ha="center", va="center", fontsize=7, color="white")
    return len(result)


def _timeseries(ax: Axes, panel: dict[str, Any], run: Query, variables: Mapping[str, str]) -> int:
    defaults = panel["fieldConfig"]["defaults"]
    drawn = 0
    for target in panel["targets"]:
        for series in run(substitute(target["expr"], variables), False):
            points = [(float(t), float(v)) for t, v in series["values"]]
            if points:
                start = points[0][0]
                ax.plot([t - start for t, _ in points], [v for _, v in points], linewidth=1,
                        label=legend(target.get("legendFormat", ""), series["metric"])[:40])  # fmt: skip
                drawn += 1
    if defaults.get("custom", {}).get("thresholdsStyle", {}).get("mode") == "dashed":
        top = max((line.get_ydata().max() for line in ax.get_lines()), default=0.0)  # type: ignore[union-attr]
        for step in defaults["thresholds"]["steps"][1:]:
            if step["value"] <= 1.5 * top:  # as Grafana, the axis follows the data, not far-off thresholds
                ax.axhline(step["value"], color=_color(step["color"]), linestyle="--", linewidth=0.8)
    ax.set_title(panel.get("title", ""), loc="left", fontsize=8, fontweight="bold")
    # Tick labels inside the panel: panels sit edge to edge.
    ax.tick_params(axis="y", labelsize=6, direction="in", pad=-3)
    for label in ax.get_yticklabels():
        label.set_horizontalalignment("left")
    ax.set_xticks([])
    unit = defaults.get("unit", "")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v, unit)))
    if drawn:
        ax.legend(fontsize=5, loc="upper left", frameon=False, ncol=2)
    else:
        ax.text(0.5, 0.5, "No data", ha="center", va="center", transform=ax.transAxes, color="#888888")
    return drawn


def _table(ax: Axes, panel: dict[str, Any], run: Query, variables: Mapping[str, str]) -> int:
    """Grafana's merge: instant series joined on their labels, one column per query value."""
    organize = next(t["options"] for t in panel["transformations"] if t["id"] == "organize")
    order = sorted(organize["indexByName"], key=lambda name: organize["indexByName"][name])
    rows: list[dict[str, str]] = []
    label_columns = [name for name in order if not name.startswith("Value")]
    for target in panel["targets"]:
        column = "Value" if len(panel["targets"]) == 1 else f"Value #{target['refId']}"
        for series in run(substitute(target["expr"], variables), True):
            labels = {k: series["metric"][k] for k in label_columns if k in series["metric"]}
            # As Grafana's merge: a row joins another whose shared label columns hold the same values.
            row = next(
                (r for r in rows if set(r) & set(labels) and all(r[k] == v for k, v in labels.items() if k in r)),
                None,
            )
            if row is None:
                row = {}
                rows.append(row)
            row.update(labels)
            row[column] = series["value"][1]
    _frame(ax, panel)
    titles = [organize["renameByName"].get(name, name) for name in order]
    overrides = {
        o["matcher"]["options"]: {p["id"]: p["value"] for p in o["properties"]}
        for o in panel["fieldConfig"]["overrides"]
    }
    cells, colors = [], []
    for row in rows[:8]:
        line, line_colors = [], []
        for name, title in zip(order, titles, strict=True):
            raw = row.get(name, "")
            style = overrides.get(title, {})
            if name.startswith("Value") and raw != "":
                value = float(raw)
                line.append(fmt(value, style.get("unit", ""), style.get("mappings")))
                steps = style.get("thresholds", {}).get("steps")
                line_colors.append(threshold_color(value, steps) if steps else "white")
            else:
                line.append(str(raw))
                line_colors.append("white")
        cells.append(line)
        colors.append(line_colors)
    if cells:
        table = ax.table(cellText=cells, cellColours=colors, colLabels=titles, loc="upper center", cellLoc="left")
        table.auto_set_font_size(False)
        table.set_fontsize(6)
    else:
        ax.text(0.5, 0.5, "No data", ha="center", va="center", color="#888888")
    return len(rows)


def _alertlist(ax: Axes, panel: dict[str, Any], alerts: Callable[[], list[dict[str, Any]]]) -> int:
    _frame(ax, panel)
    firing = [a for a in alerts() if a["labels"].get("alertname", "").startswith("BitbucketMirror")]
    if not firing:
        ax.text(0.5, 0.5, "No alerts firing", ha="center", va="center", color="#888888")
    for i, alert in enumerate(firing[:6]):
        labels = alert["labels"]
        where = labels.get("mirror") or labels.get("target") or ""
        color = _color("red" if alert["state"] == "firing" else "orange")
        ax.text(0.02, 0.85 - i * 0.15, f"● {labels['alertname']} {where} ({alert['state']})", fontsize=6, color=color,
                transform=ax.transAxes)  # fmt: skip
    return len(firing)


def draw(
    dashboard: dict[str, Any],
    run: Query,
    variables: Mapping[str, str],
    output: Path,
    alerts: Callable[[], list[dict[str, Any]]] = list,
) -> dict[str, int]:
    """Draw one dashboard into ``output`` (PNG); returns panel title -> series (or rows, alerts) drawn."""
    panels = [p for p in dashboard["panels"]]
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    figure = plt.figure(figsize=(24 * UNIT_WIDTH, bottom * UNIT_HEIGHT + 0.6))
    figure.suptitle(dashboard["title"], x=0.01, ha="left", fontsize=12, fontweight="bold")
    drawn: dict[str, int] = {}
    for panel in panels:
        box = panel["gridPos"]
        left, width = box["x"] / 24, box["w"] / 24
        height = box["h"] / (bottom + 1.4)
        top = 1 - (box["y"] + 1.2) / (bottom + 1.4)
        ax = figure.add_axes((left + 0.004, top - height + 0.01, width - 0.008, height - 0.02))
        kind = panel["type"]
        if kind == "row":
            ax.axis("off")
            ax.text(0, 0.3, panel["title"], fontsize=10, fontweight="bold")
            continue
        if kind == "stat":
            drawn[panel["title"]] = _stat(ax, panel, run, variables)
        elif kind == "timeseries":
            drawn[panel["title"]] = _timeseries(ax, panel, run, variables)
        elif kind == "table":
            drawn[panel["title"]] = _table(ax, panel, run, variables)
        elif kind == "alertlist":
            drawn[panel["title"]] = _alertlist(ax, panel, alerts)
        else:
            _frame(ax, panel)
            ax.text(0.5, 0.5, f"({kind} panel)", ha="center", va="center", color="#888888")
    figure.savefig(output, dpi=80)
    plt.close(figure)
    return drawn


def prometheus_alerts(base_url: str) -> Callable[[], list[dict[str, Any]]]:
    def read() -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{base_url}/api/v1/alerts", timeout=10) as resp:
            alerts: list[dict[str, Any]] = json.loads(resp.read())["data"]["alerts"]
        return alerts

    return read


def draw_all(
    dashboards: Mapping[str, dict[str, Any]], base_url: str, variables: Mapping[str, str], out_dir: Path
) -> dict[str, dict[str, int]]:
    """Every dashboard (file name -> JSON) as ``out_dir/<name>.png`` from the Prometheus at ``base_url``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    run, alerts = prometheus_query(base_url), prometheus_alerts(base_url)
    return {
        name: draw(dashboard, run, variables, out_dir / name.replace(".json", ".png"), alerts)
        for name, dashboard in dashboards.items()
    }
