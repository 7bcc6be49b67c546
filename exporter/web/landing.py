"""The landing page (``/``): one row per target, the primary included, and the sources that fail or went stale.

Plain HTML with a little inline style, no script, readable in any browser or with curl. It shows only what /metrics
serves: a value past ``poll.stale_after_seconds`` is left out here too, so a mirror nobody can read never looks fine.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

from exporter import __version__
from exporter.config import PRIMARY_TARGET
from exporter.drift import RepoState
from exporter.git.collector import verified_refs
from exporter.sources import SourceState
from exporter.state import ExporterState, MirrorState, PrimaryState

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
COLUMNS = (
    "Target", "URL", "Up", "State", "API", "Last good poll", "Repositories", "In sync", "Out of sync", "Missing",
    "Failing", "Lag", "Failing or stale sources",
)  # fmt: skip


@dataclass(frozen=True)
class Cell:
    text: str
    style: str = ""  # ok, bad, warn, num

    def render(self) -> str:
        css = f' class="{self.style}"' if self.style else ""
        return f"<td{css}>{html.escape(self.text)}</td>"


def _age(timestamp: float | None, now: float) -> str:
    return "never" if timestamp is None else f"{now - timestamp:.0f}s ago"


def _number(value: float | None, warn_above: float | None = None) -> Cell:
    if value is None:
        return Cell("")
    style = "warn" if warn_above is not None and value > warn_above else "num"
    return Cell(f"{value:.0f}", style)


def _problems(sources: dict[str, SourceState[Any]], now: float, stale_after: float) -> list[tuple[str, str, str, str]]:
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
        found.append((name, condition, source.error_reason or "", _age(source.last_success_timestamp, now)))
    return found


def _problem_cell(problems: list[tuple[str, str, str, str]]) -> Cell:
    if not problems:
        return Cell("none", "ok")
    return Cell("; ".join(f"{name}: {reason or condition}" for name, condition, reason, _ in problems), "bad")


def _primary_row(primary: PrimaryState, now: float, stale_after: float) -> list[Cell]:
    sources = primary.sources()
    failing = [s for s in sources.values() if s.success is False]
    up = Cell("down", "bad") if len(failing) == len(sources) else Cell("up", "ok" if not failing else "warn")
    if not any(s.polled for s in sources.values()):
        up = Cell("not polled yet", "warn")
    repositories = primary.repositories.fresh(now, stale_after)
    newest = max((s.last_success_timestamp for s in sources.values() if s.last_success_timestamp), default=None)
    return [
        Cell(PRIMARY_TARGET),
        Cell(primary.url),
        up,
        Cell(""),
        Cell(""),
        Cell(_age(newest, now)),
        _number(len(repositories) if repositories is not None else None),
        *(Cell("") for _ in range(5)),
        _problem_cell(_problems(sources, now, stale_after)),
    ]


def _mirror_row(mirror: MirrorState, now: float, stale_after: float) -> list[Cell]:
    status = mirror.status.fresh(now, stale_after)
    summary = mirror.repo_sync_status.fresh(now, stale_after)
    if mirror.status.success:
        up = Cell("up", "ok")
    else:
        up = Cell("down", "bad") if mirror.status.polled else Cell("not polled yet", "warn")
    state = Cell("")
    if status is not None:
        state = Cell(status.state, "ok" if status.state == "SYNCHRONIZED" else "warn")
    report = mirror.drift
    if report is not None and report.fresh(now, stale_after):
        lag = report.sync_lag_seconds(now)
        drift = [
            _number(report.count(RepoState.IN_SYNC)),
            _number(report.count(RepoState.CONTENT_DRIFT), warn_above=0),
            _number(report.count(RepoState.MISSING), warn_above=0),
        ]
        lag_cell = Cell(f"{lag:.0f}s", "warn" if lag > 0 else "num")
    else:
        drift = [Cell("unknown", "warn"), Cell("unknown", "warn"), Cell("unknown", "warn")]
        lag_cell = Cell("unknown", "warn")
    return [
        Cell(mirror.name),
        Cell(mirror.url),
        up,
        state,
        Cell(str(mirror.api_family or "")),
        Cell(_age(mirror.status.last_success_timestamp, now)),
        _number(summary.repositories if summary is not None else None),
        *drift,
        _number(summary.failing if summary is not None else None, warn_above=0),
        lag_cell,
        _problem_cell(_problems(mirror.sources(), now, stale_after)),
    ]


def render(state: ExporterState, now: float, stale_after: float) -> str:
    rows = [_primary_row(state.primary, now, stale_after)]
    rows += [_mirror_row(m, now, stale_after) for m in state.mirrors]
    header = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS) + "</tr>"
    body = "\n".join("<tr>" + "".join(cell.render() for cell in row) + "</tr>" for row in rows)
    targets = [(PRIMARY_TARGET, state.primary.sources()), *((m.name, m.sources()) for m in state.mirrors)]
    # A mirror's nodes, read node by node, as "mirror/node".
    targets += [(f"{m.name}/{name}", node.sources()) for m in state.mirrors for name, node in sorted(m.nodes.items())]
    details = [(target, *problem) for target, sources in targets for problem in _problems(sources, now, stale_after)]
    if details:
        detail_rows = "\n".join("<tr>" + "".join(Cell(text).render() for text in row) + "</tr>" for row in details)
        problems = (
            '<table id="sources">\n<tr><th>Target</th><th>Source</th><th>Condition</th><th>Reason</th>'
            f"<th>Last good poll</th></tr>\n{detail_rows}\n</table>"
        )
    else:
        problems = "<p>Every source was polled successfully within poll.stale_after_seconds.</p>"
    differing = [
        (str(r["mirror"]), f"{r['project']}/{r['repository']}", d["ref"], d["mirror"] or "(missing)", d["primary"])
        for r in verified_refs(state.mirrors, now, stale_after)
        for d in r["behind"]  # type: ignore[attr-defined]
    ]
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
<a href="-/healthy">Health</a> · <a href="-/ready">Readiness</a>.
Values older than {stale_after:g}s (poll.stale_after_seconds) are not shown.</p>
<table id="targets">
{header}
{body}
</table>
<h2>Failing and stale sources</h2>
{problems}
{refs}
</body></html>
"""
