"""How many rows one listing walk may bring (exporter/app.py ``max_rows``): an estate larger than the fixed floor is
read, because until the primary's count is known only the walk's own bound applies."""

from __future__ import annotations

from exporter.app import max_rows
from exporter.config import PollConfig


def test_before_the_primary_is_known_only_the_walks_own_bound_applies() -> None:
    poll = PollConfig(page_limit=1000, max_pages=10000)
    assert max_rows(poll, None) == 10_000_000, "a million-repository primary is read the first time"
    assert max_rows(poll, 1_000_000) == 10_000_000
    assert max_rows(poll, 2_000) == 100_000, "at least the fixed floor"
    assert max_rows(PollConfig(max_rows=5000), None) == 5000, "poll.max_rows wins"
