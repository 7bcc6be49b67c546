"""The REST source's part of the landing page (exporter/web/landing.py): a row for the primary and one per mirror,
and every REST target's sources (a farm's nodes as "mirror/node") for the table of failing and stale ones."""

from __future__ import annotations

from typing import Any

from exporter.config import PRIMARY_TARGET
from exporter.drift import RepoState
from exporter.rest.state import FarmState, MirrorState, PrimaryState
from exporter.sources import SourceState
from exporter.web.landing import Cell, age, number, problem_cell, problems

COLUMNS = (
    "Target", "URL", "Up", "State", "API", "Last good poll", "Repositories", "In sync", "Out of sync", "Missing",
    "Failing", "Lag", "Failing or stale sources",
)  # fmt: skip


def primary_row(primary: PrimaryState, now: float, stale_after: float) -> list[Cell]:
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
        Cell(age(newest, now)),
        number(len(repositories) if repositories is not None else None),
        *(Cell("") for _ in range(5)),
        problem_cell(problems(sources, now, stale_after)),
    ]


def mirror_row(mirror: MirrorState, now: float, stale_after: float) -> list[Cell]:
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
            number(report.count(RepoState.IN_SYNC)),
            number(report.count(RepoState.CONTENT_DRIFT), warn_above=0),
            number(report.count(RepoState.MISSING), warn_above=0),
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
        Cell(age(mirror.status.last_success_timestamp, now)),
        number(summary.repositories if summary is not None else None),
        *drift,
        number(summary.failing if summary is not None else None, warn_above=0),
        lag_cell,
        problem_cell(problems(mirror.sources(), now, stale_after)),
    ]


def rows(state: FarmState, now: float) -> list[list[Cell]]:
    stale_after = state.policy.stale_after
    return [primary_row(state.primary, now, stale_after), *(mirror_row(m, now, stale_after) for m in state.mirrors)]


def sources(
    state: FarmState, extra: dict[str, dict[str, SourceState[Any]]]
) -> list[tuple[str, dict[str, SourceState[Any]]]]:
    """Each REST target's sources by name, with ``extra`` sources other packages poll for a target (by its name)."""
    targets = [(PRIMARY_TARGET, state.primary.sources()), *((m.name, m.sources()) for m in state.mirrors)]
    targets = [(name, {**found, **extra.get(name, {})}) for name, found in targets]
    # A mirror's nodes, read node by node, as "mirror/node".
    return targets + [
        (f"{m.name}/{name}", node.sources()) for m in state.mirrors for name, node in sorted(m.nodes.items())
    ]
