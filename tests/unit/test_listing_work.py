"""The listings' work as a worker process does it (exporter/rest/listing_work.py), called in this process: pages
reused by digest, comparisons reused when nothing changed, and every count the same as a comparison from scratch,
whatever moves between two walks (insertions at the head shift every page boundary)."""

from __future__ import annotations

from typing import Any, cast

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.drift import DriftReport, MirrorRepo, RepoState, Tally, analyse
from exporter.rest import listing_work
from exporter.rest.listing_work import (
    MIRROR,
    PRIMARY,
    CompareJob,
    Projects,
    Store,
    compare,
    digest,
    feed,
    finish,
    forget,
    rows_of,
)
from exporter.rest.listings import decode_repository_page, decode_sync_status_page
from exporter.rest.state import RepoSyncSummary
from exporter.sources import FetchError

PRIMARY_NAME = "(primary)"
NOW = 1_700_000_000.0


pytestmark = pytest.mark.usefixtures("store")


def primary_page(rows: list[tuple[int, str]]) -> bytes:
    values = [
        {"id": repo_id, "slug": f"r{repo_id}", "project": {"key": "PRJ", "id": 1}, "properties": {"contentHash": h}}
        for repo_id, h in rows
    ]
    return msgspec.json.encode({"values": values, "isLastPage": False})


def mirror_page(rows: list[tuple[int, str]]) -> bytes:
    values = [{"externalRepoId": str(repo_id), "hashes": {"content": h}} for repo_id, h in rows]
    return msgspec.json.encode({"values": values, "isLastPage": False})


class Loop:
    """The loop's side, as rest/feed.py does it: digests remembered, a page whose digest is unchanged goes without
    its bytes. Counts the pages sent whole."""

    def __init__(self, target: str, kind: str) -> None:
        self.target, self.kind = target, kind
        self.digests: list[bytes] = []
        self.walks = 0
        self.sent_whole = 0

    def walk(self, pages: list[bytes]) -> object:
        self.walks += 1
        batch: list[tuple[int, bytes, bytes | None]] = []
        digests = [digest(body) for body in pages]
        for index, (body, page_digest) in enumerate(zip(pages, digests, strict=True)):
            same = index < len(self.digests) and self.digests[index] == page_digest
            batch.append((index, page_digest, None if same else body))
            self.sent_whole += 0 if same else 1
        feed(self.target, self.kind, self.walks, batch)
        summary = finish(self.target, self.walks)
        self.digests = digests
        return summary


def paged(rows: list[tuple[int, str]], size: int) -> list[list[tuple[int, str]]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)] or [[]]


def job(target: str, walk: int, seen_at: float = NOW, per_node: bool = False) -> CompareJob:
    return CompareJob(target, PRIMARY_NAME, walk, None, seen_at, seen_at, seen_at, False, per_node)


def scratch_report(
    primary: list[tuple[int, str]],
    mirror: list[tuple[int, str]],
    since: dict[str, float] | None = None,
    seen_at: float = NOW,
    per_node: bool = False,
) -> DriftReport:
    """The report of a comparison from scratch of the same rows (``since``: the first-seen times carried over)."""
    projects: Projects = {}
    primary_rows_by_id = dict(rows_of(decode_repository_page(primary_page(primary)), projects))
    listing_work.STORE, kept = Store(), listing_work.STORE
    try:
        feed("scratch", MIRROR, 1, [(0, b"x", mirror_page(mirror))])
        finish("scratch", 1)
        mirror_rows = dict(cast(dict[str, MirrorRepo], listing_work.STORE.listings["scratch"].rows))
    finally:
        listing_work.STORE = kept
    return analyse(primary_rows_by_id, None, mirror_rows, since or {}, seen_at, per_node=per_node)


def from_scratch(primary: list[tuple[int, str]], mirror: list[tuple[int, str]]) -> dict[RepoState, int]:
    return scratch_report(primary, mirror).counts


def test_a_repository_inserted_at_the_head_of_a_100_page_listing_keeps_every_count_true(store: Store) -> None:
    rows = [(i, f"{i:040x}") for i in range(1, 1001)]
    primary, mirror = Loop(PRIMARY_NAME, PRIMARY), Loop("sydney", MIRROR)
    primary.walk([primary_page(p) for p in paged(rows, 10)])
    mirror.walk([mirror_page(p) for p in paged(rows, 10)])
    first = compare(job("sydney", primary.walks))
    assert first.counts == {RepoState.IN_SYNC: 1000}
    # A quiet cycle: nothing sent whole, the comparison reused.
    primary.walk([primary_page(p) for p in paged(rows, 10)])
    mirror.walk([mirror_page(p) for p in paged(rows, 10)])
    assert (primary.sent_whole, mirror.sent_whole) == (100, 100), "only the first walks' pages"
    assert compare(job("sydney", primary.walks, NOW + 30)).repositories is first.repositories
    # A repository created at the head of the primary's listing (not yet on the mirror): every page boundary moves.
    inserted = [(0, "f" * 40), *rows]
    primary.walk([primary_page(p) for p in paged(inserted, 10)])
    mirror.walk([mirror_page(p) for p in paged(rows, 10)])
    assert primary.sent_whole == 100 + 101, "every page of the primary changed"
    report = compare(job("sydney", primary.walks, NOW + 60))
    assert report.counts == {RepoState.IN_SYNC: 1000, RepoState.MISSING: 1}
    assert report.diverged_since == {"0": NOW + 60}
    # The mirror syncs it: its listing shifts the same way; and one more repository is on the mirror only.
    mirror_rows = [*inserted, (5000, "e" * 40)]
    summary = mirror.walk([mirror_page(p) for p in paged(mirror_rows, 10)])
    assert isinstance(summary, RepoSyncSummary) and summary.repositories == 1002
    primary.walk([primary_page(p) for p in paged(inserted, 10)])
    report = compare(job("sydney", primary.walks, NOW + 90))
    assert report.counts == {RepoState.IN_SYNC: 1001, RepoState.EXTRA: 1} == from_scratch(inserted, mirror_rows)


def test_a_page_the_worker_does_not_hold_is_refused_not_guessed() -> None:
    loop = Loop("sydney", MIRROR)
    loop.digests = [digest(b"a page this worker never saw")]  # as after a worker's restart the loop did not notice
    with pytest.raises(FetchError, match="not in the worker"):
        loop.walk([b"a page this worker never saw"])


def test_a_comparison_with_another_walk_of_the_primary_than_the_worker_holds_is_refused() -> None:
    rows = [(1, "a" * 40)]
    primary, mirror = Loop(PRIMARY_NAME, PRIMARY), Loop("sydney", MIRROR)
    primary.walk([primary_page(rows)])
    mirror.walk([mirror_page(rows)])
    with pytest.raises(FetchError, match="primary listing is not in the worker"):
        compare(job("sydney", primary.walks + 1))


def test_an_id_listed_on_two_pages_makes_the_kept_rows_untrusted_and_the_next_walk_whole_is_taken() -> None:
    loop = Loop("sydney", MIRROR)
    loop.walk([mirror_page([(1, "a" * 40), (2, "a" * 40)]), mirror_page([(3, "a" * 40), (4, "a" * 40)])])
    # The second page now lists 1 again (a server's bug): the first page, unchanged, goes as its digest.
    twice = [mirror_page([(1, "a" * 40), (2, "a" * 40)]), mirror_page([(3, "a" * 40), (1, "a" * 40)])]
    with pytest.raises(FetchError, match="listed twice"):
        loop.walk(twice)
    loop.digests = []  # what rest/feed.py does after a failed walk: every page whole
    summary = loop.walk(twice)
    assert isinstance(summary, RepoSyncSummary) and summary.repositories == 3


HASHES = st.sampled_from(["a" * 40, "b" * 40, "c" * 40, "0" * 40])
LISTING = st.dictionaries(st.integers(1, 60), HASHES, max_size=40)


# One change between two walks: an id's hash set on the primary or the mirror (None: the id goes).
EDIT = st.tuples(st.booleans(), st.integers(1, 60), st.one_of(st.none(), HASHES))


def edited(listings: tuple[dict[int, str], dict[int, str]], edits: list[tuple[bool, int, str | None]]) -> tuple[
    dict[int, str], dict[int, str]
]:  # fmt: skip
    primary, mirror = dict(listings[0]), dict(listings[1])
    for on_primary, repo_id, hash_ in edits:
        target = primary if on_primary else mirror
        if hash_ is None:
            target.pop(repo_id, None)
        else:
            target[repo_id] = hash_
    return primary, mirror


@settings(max_examples=150, deadline=None, database=None)
@given(
    start=st.tuples(LISTING, LISTING),
    edits=st.lists(st.lists(EDIT, max_size=4), min_size=1, max_size=6),
    page_size=st.integers(1, 7),
    per_node=st.booleans(),
    skipped=st.sets(st.integers(0, 6)),
)
def test_reused_pages_and_updated_comparisons_give_the_report_of_a_comparison_from_scratch(
    start: tuple[dict[int, str], dict[int, str]],
    edits: list[list[tuple[bool, int, str | None]]],
    page_size: int,
    per_node: bool,
    skipped: set[int],
) -> None:
    """Whatever changes between walks (rows, ids appearing and going, page boundaries moving), a comparison that
    only reclassifies the ids whose rows changed (or reuses the last report) gives the report a comparison from
    scratch gives: counts, kept rows in order, first-seen times, extra ids. Some cycles compare nothing (``skipped``:
    a walk failed elsewhere), so an update spans several walks' changes."""
    listing_work.STORE = Store()
    primary, mirror = Loop(PRIMARY_NAME, PRIMARY), Loop("sydney", MIRROR)
    since: dict[str, float] = {}
    cycles = [start]
    for change in [*edits, []]:  # the last without a change: a quiet cycle
        cycles.append(edited(cycles[-1], change))
    for cycle, (primary_listing, mirror_listing) in enumerate(cycles):
        primary_rows_ = sorted(primary_listing.items())
        mirror_rows_ = sorted(mirror_listing.items())
        primary.walk([primary_page(p) for p in paged(primary_rows_, page_size)])
        mirror.walk([mirror_page(p) for p in paged(mirror_rows_, page_size)])
        if cycle in skipped and cycle < len(cycles) - 1:
            continue
        seen_at = NOW + 30 * cycle
        report = compare(job("sydney", primary.walks, seen_at, per_node))
        expected = scratch_report(primary_rows_, mirror_rows_, since, seen_at, per_node)
        assert report.counts == expected.counts
        assert report.repositories == expected.repositories
        assert report.diverged_since == expected.diverged_since
        assert (report.laggard_since, report.matched) == (expected.laggard_since, expected.matched)
        assert sorted(report.extra_ids) == sorted(expected.extra_ids)
        since = dict(report.diverged_since)


def test_a_comparison_after_a_changed_page_reclassifies_only_the_ids_whose_rows_changed(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [(i, f"{i:040x}") for i in range(1, 501)]
    primary, mirror = Loop(PRIMARY_NAME, PRIMARY), Loop("sydney", MIRROR)
    primary.walk([primary_page(p) for p in paged(rows, 100)])
    mirror.walk([mirror_page(p) for p in paged(rows, 100)])
    compare(job("sydney", primary.walks))
    reclassified: list[str] = []
    apply = Tally._apply

    def counted(tally: Tally, repo_id: str, *args: Any) -> None:
        reclassified.append(repo_id)
        apply(tally, repo_id, *args)

    monkeypatch.setattr(Tally, "_apply", counted)
    pushed = [(i, "e" * 40 if i in (7, 250) else h) for i, h in rows]  # two pushes: two pages of five change
    primary.walk([primary_page(p) for p in paged(pushed, 100)])
    mirror.walk([mirror_page(p) for p in paged(rows, 100)])
    report = compare(job("sydney", primary.walks, NOW + 30))
    assert sorted(reclassified) == ["250", "7"], "two pages of a hundred rows changed, two rows in them"
    assert report.counts == {RepoState.IN_SYNC: 498, RepoState.CONTENT_DRIFT: 2} == from_scratch(pushed, rows)


def test_mirror_listings_are_kept_by_column_and_compacted_when_their_ids_are_gone(store: Store) -> None:
    """Each mirror listing holds its rows in columns over the worker's shared slots; once most ids are gone (a node
    left, repositories deleted) the slots are compacted and every listing still reads the same rows."""
    big = [(i, f"{i:040x}") for i in range(1, 3001)]
    small = [(i, f"{i:040x}") for i in range(2990, 3011)]
    Loop("sydney/node-1", MIRROR).walk([mirror_page(p) for p in paged(big, 100)])
    node_2 = Loop("sydney/node-2", MIRROR)
    node_2.walk([mirror_page(p) for p in paged(small, 7)])
    before = dict(store.listings["sydney/node-2"].rows)
    assert len(store.slots.ids) == 3010, "one slot per id seen, shared by the listings"
    assert isinstance(store.listings["sydney/node-2"].rows, listing_work.MirrorColumns)
    forget(["sydney/node-1"])
    node_2.walk([mirror_page(p) for p in paged(small, 7)])  # unchanged: the walk that finishes compacts
    assert len(store.slots.ids) == 21, "only the live ids keep a slot"
    after = store.listings["sydney/node-2"].rows
    assert dict(after) == before and len(after) == 21
    assert after.get("1") is None and "2995" in after and after["2995"].content == f"{2995:040x}"
    assert after["2995"].synced_at is None, "no sync date sent: unknown, not 0"


# A mirror row as sent: (id, content hash, failed syncs, last sync as epoch seconds or None, how the date is sent:
# "iso" with its offset, "ms" epoch milliseconds, "naive" without an offset, which only the tolerant models read).
MirrorRow = tuple[int, str, int, int | None, str]
MIRROR_ROW = st.tuples(st.integers(1, 40), HASHES, st.sampled_from([0, 0, 0, 2]),
                       st.one_of(st.none(), st.integers(1_700_000_000, 1_700_000_009)),
                       st.sampled_from(["iso", "ms", "naive"]))  # fmt: skip


def full_mirror_page(rows: list[MirrorRow]) -> bytes:
    values: list[dict[str, Any]] = []
    for repo_id, content, failed, synced, sent_as in rows:
        value: dict[str, Any] = {
            "externalRepoId": str(repo_id),
            "failedSyncCount": failed,
            "hashes": {"content": content},
        }
        if synced is not None:
            iso = f"2023-11-14T22:13:{synced - 1_699_999_980:02d}"
            value["lastSyncDate"] = {"iso": iso + "Z", "ms": synced * 1000, "naive": iso}[sent_as]
        values.append(value)
    return msgspec.json.encode({"values": values, "isLastPage": False})


def listing_read(store: Store, target: str) -> tuple[dict[str, MirrorRepo], list[list[str]], list[dict[str, int]]]:
    listing = store.listings[target]
    rows = cast(listing_work.MirrorColumns, listing.rows)
    return dict(rows.items()), [p.ids for p in listing.pages], [p.failed for p in listing.pages]


@settings(max_examples=200, deadline=None, database=None)
@given(
    first=st.lists(MIRROR_ROW, max_size=30),
    edits=st.lists(st.lists(st.tuples(st.booleans(), MIRROR_ROW), max_size=3), min_size=1, max_size=5),
    page_size=st.integers(2, 8),
)
def test_a_changed_mirror_page_reads_as_the_same_page_read_whole(
    first: list[MirrorRow], edits: list[list[tuple[bool, MirrorRow]]], page_size: int
) -> None:
    """Rows of a changed page whose bytes are the same as a row of the same page before are not decoded again; the
    listing (rows, ids by page, failures) and its summary (failures, newest sync) are those of the same pages read
    whole by a worker that held nothing, whatever changed between walks: a row (its hash, failures, sync date, even
    back in time), an id appearing or going (page boundaries move)."""
    listing = {row[0]: row for row in first}
    walks = [dict(listing)]
    for change in edits:
        for goes, row in change:
            if goes:
                listing.pop(row[0], None)
            else:
                listing[row[0]] = row
        walks.append(dict(listing))
    incremental = listing_work.STORE = Store()
    loop = Loop("sydney", MIRROR)
    for rows in walks:
        pages = [full_mirror_page(page) for page in paged_rows(sorted(rows.values()), page_size)]
        listing_work.STORE = incremental
        summary = loop.walk(pages)
        whole = listing_work.STORE = Store()
        assert summary == Loop("sydney", MIRROR).walk(pages)
        assert listing_read(incremental, "sydney") == listing_read(whole, "sydney")


def paged_rows(rows: list[MirrorRow], size: int) -> list[list[MirrorRow]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)] or [[]]


def decoded_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many rows each page the worker decodes holds (mirror and primary pages alike)."""
    counts: list[int] = []
    for name, real in (("decode_sync_status_page", decode_sync_status_page),
                       ("decode_repository_page", decode_repository_page)):  # fmt: skip

        def counting(body: bytes, real: Any = real) -> Any:
            page = real(body)
            counts.append(len(page.values))
            return page

        monkeypatch.setattr(listing_work, name, counting)
    return counts


def test_a_page_changed_for_one_row_decodes_that_row_alone(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    rows: list[MirrorRow] = [(i, f"{i:040x}", 0, 1_700_000_000 + i % 7, "iso") for i in range(1, 301)]
    primary = [(i, f"{i:040x}") for i in range(1, 301)]
    mirror, upstream = Loop("sydney", MIRROR), Loop(PRIMARY_NAME, PRIMARY)
    mirror.walk([full_mirror_page(p) for p in paged_rows(rows, 100)])
    upstream.walk([primary_page(p) for p in paged(primary, 100)])
    decoded = decoded_rows(monkeypatch)
    synced = [(150, "e" * 40, 0, 1_700_000_009, "iso") if row[0] == 150 else row for row in rows]
    summary = mirror.walk([full_mirror_page(p) for p in paged_rows(synced, 100)])
    assert decoded == [1], "one page changed, for one row of its hundred"
    assert isinstance(summary, RepoSyncSummary) and summary.repositories == 300
    assert store.listings["sydney"].rows["150"] == MirrorRepo("e" * 40, None, 0, 1_700_000_009.0)
    decoded.clear()
    pushed = [(i, "e" * 40 if i == 250 else h) for i, h in primary]
    assert upstream.walk([primary_page(p) for p in paged(pushed, 100)]) == 300
    assert decoded == [1], "the primary's too"
    assert cast(dict[str, Any], store.listings[PRIMARY_NAME].rows)["250"].content == "e" * 40
