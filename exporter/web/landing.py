"""The landing page (``/``): a table of targets, the sources that fail or went stale, and the refs that differ.

Plain HTML with a little inline style, no script, readable in any browser or with curl. It shows only what /metrics
serves: a value past ``poll.stale_after_seconds`` is left out here too, so a mirror nobody can read never looks fine.
The rows come from the sources (exporter/rest/landing.py, the git source's verify_refs) through the composition root;
this module draws the page and judges each source's health by the one freshness rule.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

from exporter import __version__
from exporter.external_url import runbooks as runbooks_at
from exporter.sources import SourceState

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #eee; }
td.ok { background: #d9f2d9; }
td.bad { background: #f4c7c3; color: #7a0000; font-weight: bold; }
td.warn { background: #fce8b2; }
td.num { text-align: right; }
"""


@dataclass(frozen=True)
class Cell:
    text: str
    style: str = ""  # ok, bad, warn, num

    def render(self) -> str:
        css = f' class="{self.style}"' if self.style else ""
        return f"<td{css}>{html.escape(self.text)}</td>"


def age(timestamp: float | None, now: float) -> str:
    return "never" if timestamp is None else f"{now - timestamp:.0f}s ago"


def number(value: float | None, warn_above: float | None = None) -> Cell:
    if value is None:
        return Cell("")
    style = "warn" if warn_above is not None and value > warn_above else "num"
    return Cell(f"{value:.0f}", style)


def problems(sources: dict[str, SourceState[Any]], now: float, stale_after: float) -> list[tuple[str, str, str, str]]:
    """(source, condition, reason, last good poll) for each source that fails or whose values are not served."""
    found = []
    for name, source in sources.items():
        served = source.fresh(now, stale_after) is not None
        if source.success is not False and (served or source.on_demand):
            continue
        if source.success is False:
            condition = "failing, values still served" if served else "failing, values left out (stale)"
        else:
            condition = "no value yet" if source.value is None else "values left out (stale)"
        found.append((name, condition, source.error_reason or "", age(source.last_success_timestamp, now)))
    return found


def problem_cell(found: list[tuple[str, str, str, str]]) -> Cell:
    if not found:
        return Cell("none", "ok")
    return Cell("; ".join(f"{name}: {reason or condition}" for name, condition, reason, _ in found), "bad")


@dataclass(frozen=True)
class Landing:
    """What the sources show on the page: the targets table (its columns and a row each), every target's sources by
    name (for the table of failing and stale ones), and the refs that differ (mirror, repository, ref, on the
    mirror, on the primary)."""

    columns: tuple[str, ...]
    rows: list[list[Cell]]
    sources: list[tuple[str, dict[str, SourceState[Any]]]]
    differing_refs: list[tuple[str, str, str, str, str]]


def _runbook_base(external_url: str) -> str:
    """Where alerts generated with the same --web.external-url send people, to check it from a browser."""
    if not external_url:
        return ""
    runbooks = html.escape(runbooks_at(external_url))
    return f'\nAlerts link to runbooks at <a id="runbook-base" href="{runbooks}">{runbooks}</a> (--web.external-url).'


def render(page: Landing, now: float, stale_after: float, external_url: str = "") -> str:
    header = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in page.columns) + "</tr>"
    body = "\n".join("<tr>" + "".join(cell.render() for cell in row) + "</tr>" for row in page.rows)
    details = [(target, *found) for target, sources in page.sources for found in problems(sources, now, stale_after)]
    if details:
        detail_rows = "\n".join("<tr>" + "".join(Cell(text).render() for text in row) + "</tr>" for row in details)
        problem_table = (
            '<table id="sources">\n<tr><th>Target</th><th>Source</th><th>Condition</th><th>Reason</th>'
            f"<th>Last good poll</th></tr>\n{detail_rows}\n</table>"
        )
    else:
        problem_table = "<p>Every source was polled successfully within poll.stale_after_seconds.</p>"
    differing = page.differing_refs
    if differing:
        ref_rows = "\n".join("<tr>" + "".join(Cell(str(text)).render() for text in row) + "</tr>" for row in differing)
        refs = (
            '<h2>Refs that differ (verify_refs)</h2>\n<table id="refs">\n<tr><th>Mirror</th><th>Repository</th>'
            f"<th>Ref</th><th>On the mirror</th><th>On the primary</th></tr>\n{ref_rows}\n</table>"
        )
    else:
        refs = ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Bitbucket Mirror Exporter</title><style>{STYLE}</style></head>
<body>
<h1>Bitbucket Mirror Exporter</h1>
<p>Version {html.escape(__version__)}. <a href="metrics">Metrics</a> · <a href="runbooks">Runbooks</a> ·
<a href="-/healthy">Health</a> · <a href="-/ready">Readiness</a> ·
<a href="api/v1/behind">Most behind (JSON)</a>.
Values older than {stale_after:g}s (poll.stale_after_seconds) are not shown.{_runbook_base(external_url)}</p>
<table id="targets">
{header}
{body}
</table>
<h2>Failing and stale sources</h2>
{problem_table}
{refs}
</body></html>
"""
