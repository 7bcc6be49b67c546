"""The REST source's own configuration section: ``lag`` (dating divergences from the push). The primary, the mirrors'
URLs and credentials and ``poll`` are the core's (exporter/config.py): every source reads them."""

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
