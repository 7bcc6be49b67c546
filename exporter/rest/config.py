"""The REST source's own configuration sections: ``lag`` (dating divergences from the push) and ``probe`` (a node
health check for load balancers). The primary, the mirrors' URLs and credentials and ``poll`` are the core's
(exporter/config.py): every source reads them."""

from __future__ import annotations

from pydantic import Field

from exporter.strict import StrictModel


class LagConfig(StrictModel):
    """Dating each divergence from the push that began it (the primary's ref change activity), so lag survives a
    restart and two exporters agree. Needs REPO_ADMIN on the repositories for the primary's user; without it (or
    when a lookup fails) a repository's lag counts from when the exporter first saw it, and says so."""

    from_push: bool = True
    # Activity pages asked of the primary per cycle, over every mirror and node: the longest-lagging first. A page is
    # asked once per (repository, primary content hash); repositories in sync cost nothing.
    lookups_per_cycle: int = Field(default=50, ge=0, le=10000)
    # Ref changes per page: a repository with more pushes since its mirror last synced is dated from the oldest on
    # the page (lag read low, never high).
    page_limit: int = Field(default=25, ge=1, le=1000)
    # Pages of ``page_limit`` read per lookup where the server lists its ref changes oldest first (the order is not
    # published): the newest are then on the last page. Newest first, one page is read.
    max_pages: int = Field(default=4, ge=1, le=100)
    # After a failed lookup (no REPO_ADMIN, 404, an error), cycles before the repository is asked again unless its
    # content changes first.
    failure_backoff_cycles: int = Field(default=10, ge=1, le=10000)


class ProbeConfig(StrictModel):
    """``GET /probe/node?mirror=M&node=N`` for a load balancer's health check in front of a farm's nodes (read node
    by node: ``nodes``): 200 while the node is up, SYNCHRONIZED and no repository in its mirror's scope has been
    behind on it (content drift or missing) longer than ``max_lag_seconds``; 503 with the reason otherwise, and 503
    "unknown" when what it would be judged on is stale (docs/nodes-behind-a-load-balancer.md). Off unless enabled."""

    enabled: bool = False
    # A repository behind (or missing) on the node for longer than this takes the node out. A new repository is
    # missing everywhere until its first sync: its lag counts from its creation (lag.from_push), so it takes no node
    # out unless its sync is this late.
    max_lag_seconds: float = Field(default=300.0, gt=0, le=7 * 86400)
    # Load balancers probe without credentials: true serves the probe without basic auth even when the web config
    # has users (the answer names repositories: project keys and slugs).
    unauthenticated: bool = False
    # Probes answered per second over all callers, at most; more get 429 (a load balancer probes each node every
    # few seconds: this bounds what a misconfigured one, or anyone, costs).
    max_requests_per_second: float = Field(default=50.0, gt=0, le=10000)
