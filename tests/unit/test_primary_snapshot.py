"""The primary's snapshot as the loop builds it from walk to walk (exporter/rest/poller.py): a copy of the previous
one patched by the changed pages, only their rows of other bytes decoded, equals the listing whatever changed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.app import WORKER_PRELOAD
from exporter.rest import listing_work
from exporter.rest.api import PrimaryApi
from exporter.rest.client import ClockReading, Page, decode_envelope
from exporter.rest.models import MirrorServer
from exporter.rest.poller import PrimaryPoller
from exporter.rest.state import PrimaryState
from exporter.workers import InlineWorker, WorkerPool
from tests.unit.test_poller import count_decoded

HASHES = st.sampled_from(["a" * 40, "b" * 40, "c" * 40])


class PagedPrimary(PrimaryApi):
    """The primary's ``repos`` from ``rows`` (id -> content hash), ``per_page`` a page, in id order."""

    def __init__(self, per_page: int) -> None:
        self.rows: dict[int, str] = {}
        self.per_page = per_page

    def clock(self) -> ClockReading | None:
        return None

    async def mirror_servers(self) -> list[MirrorServer]:
        return []

    def repository_raw_pages(
        self, envelope: Callable[[bytes], Page[bytes]] = decode_envelope
    ) -> AsyncIterator[Page[bytes]]:
        async def pages() -> AsyncIterator[Page[bytes]]:
            ordered = sorted(self.rows.items())
            chunks = [ordered[i : i + self.per_page] for i in range(0, len(ordered), self.per_page)] or [[]]
            for number, chunk in enumerate(chunks):
                values = [{"id": i, "slug": f"r{i}", "project": {"key": "PRJ", "id": 1},
                           "properties": {"contentHash": content}} for i, content in chunk]  # fmt: skip
                yield envelope(msgspec.json.encode({"values": values, "isLastPage": number == len(chunks) - 1}))

        return pages()


@settings(max_examples=120, deadline=None, database=None)
@given(
    first=st.dictionaries(st.integers(1, 40), HASHES, max_size=30),
    edits=st.lists(st.lists(st.tuples(st.integers(1, 40), st.one_of(st.none(), HASHES)), max_size=4), max_size=5),
    per_page=st.integers(1, 7),
)
def test_the_snapshot_equals_the_listing_and_counts_each_push_once_whatever_changed(
    first: dict[int, str], edits: list[list[tuple[int, str | None]]], per_page: int
) -> None:
    """Rows changed, repositories created and deleted (page boundaries move): after every walk the snapshot is the
    listing, and the content changes counted are those between the two listings, each once."""

    async def walks() -> None:
        api = PagedPrimary(per_page)
        api.rows = dict(first)
        primary = PrimaryPoller(
            PrimaryState(url="https://b.example.com"), api, 30, WorkerPool(WORKER_PRELOAD, 1, InlineWorker)
        )
        await primary.poll_once()
        pushes = 0
        for change in [*edits, []]:
            before = dict(api.rows)
            for repo_id, content in change:
                if content is None:
                    api.rows.pop(repo_id, None)
                else:
                    api.rows[repo_id] = content
            pushes += sum(1 for i, content in api.rows.items() if i in before and before[i] != content)
            await primary.poll_once()
            snapshot = primary.state.repositories.value
            assert snapshot is not None
            assert {repo_id: row.content for repo_id, row in snapshot.items()} == {
                str(i): h for i, h in api.rows.items()
            }
            assert len(snapshot) == len(api.rows)
            assert primary.state.content_changes == pushes

    kept, listing_work.STORE = listing_work.STORE, listing_work.Store()
    try:
        asyncio.run(walks())
    finally:
        listing_work.STORE = kept


async def test_a_page_pushed_once_decodes_that_row_alone_and_shares_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    api = PagedPrimary(100)
    api.rows = {i: "a" * 40 for i in range(1, 301)}
    primary = PrimaryPoller(
        PrimaryState(url="https://b.example.com"), api, 30, WorkerPool(WORKER_PRELOAD, 1, InlineWorker)
    )
    await primary.poll_once()
    first = primary.state.repositories.value
    decoded = count_decoded(monkeypatch)
    api.rows[150] = "b" * 40
    await primary.poll_once()
    second = primary.state.repositories.value
    assert decoded == [1], "one page changed, for one row of its hundred"
    assert first is not None and second is not None and second is not first
    assert second["150"].content == "b" * 40 and all(second[str(i)] is first[str(i)] for i in range(1, 301) if i != 150)
    assert primary.state.content_changes == 1


async def test_a_repository_alone_on_the_last_page_deleted_leaves_the_snapshot() -> None:
    api = PagedPrimary(3)
    api.rows = {i: "a" * 40 for i in range(1, 11)}  # the last page lists 10 alone
    primary = PrimaryPoller(
        PrimaryState(url="https://b.example.com"), api, 30, WorkerPool(WORKER_PRELOAD, 1, InlineWorker)
    )
    await primary.poll_once()
    del api.rows[10]  # no page changes, the last one is gone
    await primary.poll_once()
    snapshot = primary.state.repositories.value
    assert snapshot is not None and sorted(snapshot, key=int) == [str(i) for i in range(1, 10)]
