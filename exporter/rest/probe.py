"""``GET /probe/node?mirror=M&node=N``: whether a load balancer should send clones to a farm node (BSERV-11160: a node
that has not synchronized passes Bitbucket's own health check and serves stale clones). Judged from the latest
state, never with a Bitbucket call; a "yes" needs proof: the node's own ``/status`` read and fresh, SYNCHRONIZED,
and its drift report fresh with no repository behind (or missing) on it for longer than the bound. Anything stale or
never read is "unknown", which a load balancer must treat as a no (docs/nodes-behind-a-load-balancer.md)."""

from __future__ import annotations

from dataclasses import dataclass

from exporter.drift import RepoState, late
from exporter.rest.state import FarmState

SYNCHRONIZED = "SYNCHRONIZED"


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    # One line, for the load balancer's log and an admin's curl.
    reason: str


def _age(seconds: float) -> str:
    return f"{seconds:.0f} s"


def node_verdict(state: FarmState, mirror: str, node: str, now: float, max_lag: float) -> Verdict | None:
    """The node's verdict; None when the exporter reads no such node (an unknown mirror, or a mirror not read node
    by node)."""
    target = next((m for m in state.mirrors if m.name == mirror), None)
    found = target.nodes.get(node) if target is not None and target.by_node else None
    if found is None:
        return None
    stale_after = state.policy.stale_after
    if not found.status.polled:
        return Verdict(False, "unknown: the node's /status was not read yet")
    if not found.status.success:
        return Verdict(False, f"down: the node's /status failed ({found.status.error_reason})")
    status = found.status.fresh(now, stale_after)
    if status is None:
        return Verdict(False, "unknown: the node's /status is stale")
    if status.state != SYNCHRONIZED:
        return Verdict(False, f"not synchronized: the node reports {status.state}")
    report = found.drift
    if report is None:
        return Verdict(False, "unknown: the node's repositories were not compared with the primary's yet")
    if not report.fresh(now, stale_after):
        return Verdict(False, f"unknown: the node's drift is stale (inputs {_age(now - report.inputs_at)} old)")
    behind = late(report, now, max_lag)
    if behind:
        missing = sum(1 for repo in behind if repo.state is RepoState.MISSING)
        worst = behind[0]
        return Verdict(
            False,
            f"behind: {len(behind)} repositories behind for over {_age(max_lag)} ({missing} missing); worst "
            f"{worst.project_key}/{worst.slug}, {_age(worst.lag_seconds(now))}",
        )
    return Verdict(True, f"ok: {SYNCHRONIZED}, no repository behind for over {_age(max_lag)}")
