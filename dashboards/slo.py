"""Mirror freshness SLO: how much of each SLO's 30-day error budget is left, how fast it burns, and the SLI itself
(docs/slo.md). Read from the SLO recording rules (alerts/rules.py, ``slo``): load the rules file."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from grafanalib import core as g

from alerts.rules import AlertConfig, freshness_errors, push_sync_errors
from dashboards import variables
from dashboards.common import SLO_UID
from dashboards.common import dashboard as make_dashboard
from dashboards.panels import Grid, Query, mirror_sel, stat, timeseries

UID = SLO_UID
BUDGET_LEFT: list[dict[str, Any]] = [
    {"color": "red", "value": None},
    {"color": "orange", "value": 0.25},
    {"color": "green", "value": 0.5},
]


def _slo(grid: Grid, name: str, errors: Callable[[str], str], objective: str, alert: str, what: str) -> None:
    """One SLO's row: its budget and SLI over 30 days, its burn rates and its SLI over time. ``errors(window)``: the
    recorded error ratio over that window."""
    budget = f"(1 - ${objective})"
    thirty_days = f"avg_over_time({mirror_sel(errors('1h'))}[30d])"
    grid.row(name)
    grid.line(
        [
            stat(
                f"{name}: error budget left, 30 days",
                f"The share of the 30-day error budget left, for the worst of the selected mirrors: 1 minus the "
                f"30-day share of {what} over the budget, 1 - objective (the `{objective}` variable: keep it as in "
                "the rules). Below 0: the objective is missed.",
                Query(f"1 - max({thirty_days}) / {budget}"),
                "percentunit",
                BUDGET_LEFT,
            ),
            stat(
                f"{name}: SLI, 30 days",
                f"The 30-day share of {what} that were fine, for the worst of the selected mirrors: the SLI held "
                f"against the `{objective}` objective.",
                Query(f"1 - max({thirty_days})"),
                "percentunit",
            ),
        ],
        height=4,
    )
    grid.line(
        [
            timeseries(
                f"{name}: burn rate",
                f"How many times faster than the budget allows each mirror spends it, over 1 hour and over 6 hours: "
                f"{alert} pages above 14.4 over 1h (and 5m) and opens a ticket above 6 over 6h (and 30m).",
                [Query(f"{mirror_sel(errors(w))} / {budget}", f"{{{{mirror}}}} {w}") for w in ("1h", "6h")],
                "none",
            ),
            timeseries(
                f"{name}: SLI",
                f"Per mirror, the share of {what} that were fine, over the last hour.",
                [Query(f"1 - {mirror_sel(errors('1h'))}", "{{mirror}}")],
                "percentunit",
            ),
        ],
        height=8,
    )


def dashboard() -> g.Dashboard:
    grid = Grid()
    _slo(
        grid,
        "Freshness",
        freshness_errors,
        "freshness_objective",
        "BitbucketMirrorFreshnessBudgetBurn",
        "(mirror, repository) pairs in scope whose content lagged past the SLO's threshold",
    )
    _slo(
        grid,
        "Push sync",
        push_sync_errors,
        "push_sync_objective",
        "BitbucketMirrorPushSyncBudgetBurn",
        "pushes that reached the mirror later than the SLO's threshold",
    )
    return make_dashboard(
        "Bitbucket mirror freshness SLO",
        UID,
        "How much of each freshness SLO's error budget is left and how fast it burns (docs/slo.md); from the SLO "
        "recording rules.",
        grid.panels,
        extra=[
            variables.objective("freshness_objective", AlertConfig().slo_freshness_objective),
            variables.objective("push_sync_objective", AlertConfig().slo_push_sync_objective),
        ],
    )
