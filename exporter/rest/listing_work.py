"""The listings' work, done in a worker process (exporter/workers.py): decoding the pages of the primary's ``repos``
and of each mirror's (or node's) ``repoSyncStatus``, keeping them by page, comparing a mirror's with the primary's,
and the union over a farm's nodes. The event loop sends page bytes and names (exporter/rest/feed.py) and gets back
small answers: a listing's summary, a drift report.

Cost grows with what changed: a page whose bytes hash (BLAKE3, on the loop) as the same page of the target's
previous walk is not even sent; its decoded rows are reused. A page that did change (for one row of its hundred, as a
rule) has each row's bytes hashed, and only the rows whose hash is not among the same page's kept row hashes are
decoded: the others are the rows the listing holds already. A comparison whose two listings are both unchanged since
the target's previous comparison (every page the same) is not done again: its report is reused with the new read
times. When pages changed, a walk's end records which ids' rows changed, appeared or went (a page changes for one of
its hundred rows), and the comparison reclassifies only those in the analysis it kept (``drift.Tally``). A
repository inserted at the head of a listing shifts every page after it: those pages differ, each decodes the row
shifted in from the page before and finds the rest among its kept rows, and the counts stay true
(tests/unit/test_listing_work.py).

State lives in module globals of the worker process, one ``Store``; the process keeps it between calls. When a
worker dies its state goes with it: the loop sees the worker's ``generation`` change and sends everything again.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from sys import intern
from typing import Any, NamedTuple, cast

import aiohttp
import msgspec
from blake3 import blake3
from yarl import URL

from exporter.config import Credentials
from exporter.drift import DriftReport, MirrorRepo, PrimaryRepo, Slots, Tally, union
from exporter.rest.client import (
    Affinity,
    BitbucketClient,
    ClockReading,
    HttpSetup,
    Page,
    RawRows,
    TrafficStats,
    http_session,
    raw_page,
)
from exporter.rest.listings import (
    PrimaryRepositoryRow,
    decode_repository_page,
    decode_sync_status_page,
    sync_seconds,
)
from exporter.rest.state import RepoSyncSummary
from exporter.sources import INVALID_RESPONSE, FetchError

PRIMARY = "primary"
MIRROR = "mirror"


@dataclass
class StoredPage:
    """One page as the worker keeps it: its digest, the ids it lists (their rows are in the listing's ``rows``), and
    (mirror pages) what the listing's summary needs of it."""

    digest: bytes
    ids: list[str]
    failed: dict[str, int] = field(default_factory=dict)
    newest: float | None = None
    # The page's paging fields as sent (isLastPage, nextPageStart, limit): a walk in the worker follows an unchanged
    # page without reading it again.
    paging: tuple[Any, Any, Any] = (True, None, None)
    # (mirror pages) Each row's bytes hashed, in page order: when the page changes (for one row of its hundred), rows
    # of the same bytes as one of the kept page's are not decoded again (``_mirror_page``).
    row_hashes: array[int] = field(default_factory=lambda: array("q"))


@dataclass(frozen=True, slots=True)
class PageColumns:
    """The rows of one changed mirror page until its walk is whole, by column as the listing keeps them (a walk's
    changed pages are held whole before the listing takes them: nine node walks at once on a cold start)."""

    ids: list[str]
    content: list[str | None]
    metadata: list[str | None]
    failed: array[int]
    synced: array[float]  # NaN: unknown


NOT_LISTED = -1


class MirrorColumns(Mapping[str, MirrorRepo]):
    """A mirror's (or node's) listing by column, indexed by the worker's ``Slots``: 32 bytes a repository (two
    references to interned hashes, the failure count, the sync time) instead of a dict entry, a struct and a float
    (about 130), for each of a farm's nodes. Read as the mapping of ``MirrorRepo`` rows the analysis takes (each row
    built when asked for: a comparison of two unchanged listings is reused, so rows are built only when one changed).
    """

    def __init__(self, slots: Slots) -> None:
        self.slots = slots
        self._content: list[str | None] = []
        self._metadata: list[str | None] = []
        self._failed = array("q")  # NOT_LISTED where this listing has no such id
        self._synced = array("d")  # NaN: unknown
        self._count = 0

    def _grow(self, size: int) -> None:
        missing = size - len(self._failed)
        if missing > 0:
            self._content.extend([None] * missing)
            self._metadata.extend([None] * missing)
            self._failed.extend([NOT_LISTED] * missing)
            self._synced.extend([math.nan] * missing)

    def _set(self, repo_id: str, content: str | None, metadata: str | None, failed: int, synced: float) -> bool:
        """Whether the row is new or differs from the one it replaces."""
        slot = self.slots.slot(repo_id)
        self._grow(slot + 1)
        before = self._failed[slot]
        if before == NOT_LISTED:
            self._count += 1
        elif (
            before == failed
            and self._content[slot] == content
            and self._metadata[slot] == metadata
            and (self._synced[slot] == synced or (math.isnan(synced) and math.isnan(self._synced[slot])))
        ):
            return False
        self._content[slot], self._metadata[slot] = content, metadata
        self._failed[slot] = failed
        self._synced[slot] = synced
        return True

    def put(self, repo_id: str, row: MirrorRepo) -> None:
        synced = math.nan if row.synced_at is None else cast(float, row.synced_at)
        self._set(repo_id, row.content, row.metadata, row.failed_syncs, synced)

    def update(self, page: PageColumns) -> list[str]:
        """The page's rows set; the ids whose row is new or changed."""
        columns = zip(page.ids, page.content, page.metadata, page.failed, page.synced, strict=True)
        return [repo_id for repo_id, content, metadata, failed, synced in columns
                if self._set(repo_id, content, metadata, failed, synced)]  # fmt: skip

    def pop(self, repo_id: str, default: None = None) -> None:
        slot = self.slots.index.get(repo_id)
        if slot is not None and self._listed(slot):
            self._failed[slot] = NOT_LISTED
            self._content[slot] = self._metadata[slot] = None
            self._count -= 1

    def _listed(self, slot: int) -> bool:
        return slot < len(self._failed) and self._failed[slot] != NOT_LISTED

    def synced_of(self, repo_id: str) -> float | None:
        """The row's sync time (NaN: unknown); None where this listing has no such id."""
        slot = self.slots.index.get(repo_id)
        return self._synced[slot] if slot is not None and self._listed(slot) else None

    def __contains__(self, repo_id: object) -> bool:
        slot = self.slots.index.get(repo_id) if isinstance(repo_id, str) else None
        return slot is not None and self._listed(slot)

    def _row(self, slot: int) -> MirrorRepo | None:
        if not self._listed(slot):
            return None
        failed = self._failed[slot]
        synced = self._synced[slot]
        return MirrorRepo(self._content[slot], self._metadata[slot], failed, None if math.isnan(synced) else synced)

    def get(self, repo_id: str, default: MirrorRepo | None = None) -> MirrorRepo | None:  # type: ignore[override]
        slot = self.slots.index.get(repo_id)
        row = self._row(slot) if slot is not None else None
        return default if row is None else row

    def __getitem__(self, repo_id: str) -> MirrorRepo:
        row = self.get(repo_id)
        if row is None:
            raise KeyError(repo_id)
        return row

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        ids = self.slots.ids
        return (ids[slot] for slot, failed in enumerate(self._failed) if failed != NOT_LISTED)

    def moved_to(self, slots: Slots) -> MirrorColumns:
        """The same rows under ``slots`` (a compaction of the worker's ids)."""
        moved = MirrorColumns(slots)
        for slot, repo_id in enumerate(self.slots.ids):
            row = self._row(slot)
            if row is not None:
                moved.put(repo_id, row)
        return moved


@dataclass
class Listing:
    kind: str
    pages: list[StoredPage]
    # Every row by id: kept from walk to walk, only the rows of changed pages replaced (a mirror's by column).
    rows: dict[str, PrimaryRepo] | MirrorColumns
    # The loop's walk number that made it; ``version`` is new only when a page changed (or the page count): numbers
    # unique in the worker, so a listing read whole again never takes up an old one's.
    walk: int
    version: int
    # How each of the latest versions came from the one before it: version -> (that version, the ids whose rows
    # changed, appeared or went). A version read whole has no entry: what changed is not known.
    history: dict[int, tuple[int, frozenset[str]]] = field(default_factory=dict)

    def changed_since(self, version: int) -> set[str] | None:
        """The ids whose rows changed (appeared, went) since ``version`` of this listing; None when not known."""
        ids: set[str] = set()
        at = self.version
        while at != version:
            step = self.history.get(at)
            if step is None:
                return None
            at, changed = step
            ids |= changed
        return ids


@dataclass
class Walk:
    kind: str
    walk: int
    pages: list[StoredPage] = field(default_factory=list)
    # The rows of the pages that changed, by page index, until the walk is whole.
    changed: dict[int, PageColumns | list[tuple[str, PrimaryRepo]]] = field(default_factory=dict)


@dataclass(frozen=True)
class CompareJob:
    """One comparison: a mirror's (or node's) listing ``target`` against the primary's walk ``primary_walk``."""

    target: str
    primary: str
    primary_walk: int
    scope: frozenset[str] | None
    seen_at: float
    inputs_at: float
    rows_from: float
    keep_all: bool
    per_node: bool
    # The first-seen times to carry over; None: the ones this worker kept from the target's previous comparison
    # (the loop sends them only to a worker that has not got them: a new one).
    previous_since: dict[str, float] | None = None


# A comparison asked for a walk of the primary's listing the worker has since replaced with a later one (the primary's
# next cycle began before this mirror's ended): the loop asks again once it knows when that walk was read.
NEWER_PRIMARY_WALK = "the worker holds a later walk of the primary's listing"


@dataclass
class Compared:
    # (primary version, target version, scope, keep_all, per_node)
    key: tuple[object, ...]
    report: DriftReport
    # The analysis behind the report, for the next comparison to update rather than redo.
    tally: Tally


@dataclass
class Store:
    listings: dict[str, Listing] = field(default_factory=dict)
    walks: dict[str, Walk] = field(default_factory=dict)
    compared: dict[str, Compared] = field(default_factory=dict)
    slots: Slots = field(default_factory=Slots)

    def compact(self) -> None:
        """Ids no listing has any more (repositories deleted, nodes gone) keep their slot until the worker's ids
        are more than twice the largest listing's: then every mirror listing moves to slots of the live ids only."""
        columns = [listing.rows for listing in self.listings.values() if isinstance(listing.rows, MirrorColumns)]
        largest = max((len(rows) for rows in columns), default=0)
        if len(self.slots.ids) <= 2 * largest + COMPACT_SLACK:
            return
        live = Slots(repo_id for repo_id in self.slots.ids if any(repo_id in rows for rows in columns))
        for listing in self.listings.values():
            if isinstance(listing.rows, MirrorColumns):
                listing.rows = listing.rows.moved_to(live)
        self.slots = live


# Dead slots tolerated beyond twice the largest listing before a compaction.
COMPACT_SLACK = 1024
# Versions of a listing whose changes are kept: a target compared again after missing a few cycles (its walk or the
# primary's failed) still updates its analysis rather than redoing it.
HISTORY = 4
_versions = itertools.count(1)


STORE = Store()


def row_hashes_of(rows: list[msgspec.Raw]) -> array[int]:
    """Each row's bytes hashed by the interpreter (SipHash, keyed at random per process, so no sender can choose
    rows that collide): reused only within a page whose digest already differs, for a row of the same bytes as one
    of the same page's before."""
    return array("q", map(hash, map(bytes, rows)))


@dataclass(frozen=True, slots=True)
class RowsReused:
    """A changed page's rows against the same page as kept: each row's hash, the kept id of each row of the same bytes
    (None: to decode), where those to decode are, and the kept ids no row of the same bytes lists now."""

    hashes: array[int]
    ids: list[str | None]
    fresh: list[int]
    went: list[str]

    @property
    def worth_it(self) -> bool:
        """Most rows kept: else the page is decoded whole (rows shifted in from a neighbour by an insertion)."""
        return 2 * len(self.fresh) <= len(self.hashes)

    def fresh_body(self, raw: RawRows) -> bytes:
        """A page of the rows to decode alone, as sent."""
        return b'{"values":[' + b",".join(bytes(raw.values[position]) for position in self.fresh) + b"]}"

    def with_ids(self, decoded: list[str]) -> list[str]:
        ids = self.ids
        for position, repo_id in zip(self.fresh, decoded, strict=True):
            ids[position] = repo_id
        return cast(list[str], ids)


def rows_reused(raw: RawRows, kept_hashes: array[int], kept_ids_in_order: Iterable[str]) -> RowsReused:
    """A changed page's rows against the same page as kept (its rows' hashes and ids)."""
    hashes = row_hashes_of(raw.values)
    kept_ids = dict(zip(kept_hashes, kept_ids_in_order, strict=True))
    ids: list[str | None] = list(map(kept_ids.get, hashes))
    went = [kept_ids[row_hash] for row_hash in kept_ids.keys() - set(hashes)]
    return RowsReused(hashes, ids, _positions_of_none(ids), went)


def _with_hashes(stored: StoredPage, raw: RawRows | None, hashes: array[int] | None = None) -> StoredPage:
    """A page decoded whole, with its rows' hashes where the raw split agrees with the decoder on its rows."""
    if raw is not None and len(raw.values) == len(stored.ids):
        stored.row_hashes = hashes if hashes is not None else row_hashes_of(raw.values)
    return stored


def _mirror_page(
    digest: bytes, body: bytes, kept: StoredPage | None = None, listing: MirrorColumns | None = None
) -> tuple[StoredPage, PageColumns]:
    """A changed page of a mirror's listing: its stored form and the rows to set. Given the same page as ``kept`` of
    ``listing``, only the rows whose bytes are not among the kept page's are decoded (and returned): a page changes
    for one row of its hundred, and decoding a whole page cost about 140 us against 40 for hashing its rows."""
    raw = raw_page(body)
    if raw is None or kept is None or listing is None or not kept.row_hashes:
        stored, rows = _decoded_mirror_page(digest, body)
        return _with_hashes(stored, raw), rows
    reused = rows_reused(raw, kept.row_hashes, kept.ids)
    # The page's newest sync is the kept one's unless a row that may have held it went (changed or left): then the
    # page is decoded whole rather than the other rows' dates kept too.
    newest_went = kept.newest is not None and any(listing.synced_of(i) == kept.newest for i in reused.went)
    if newest_went or not reused.worth_it:
        stored, rows = _decoded_mirror_page(digest, body)
        return _with_hashes(stored, raw, reused.hashes), rows
    decoded, rows = _decoded_mirror_page(digest, reused.fresh_body(raw))
    ids = reused.with_ids(decoded.ids)
    failed = decoded.failed
    if kept.failed:  # the failures of rows kept as they were (a changed row's are the decoded ones)
        gone_or_changed = set(reused.went)
        failed = {**{repo_id: n for repo_id, n in kept.failed.items() if repo_id not in gone_or_changed}, **failed}
    newest = max((when for when in (kept.newest, decoded.newest) if when is not None), default=None)
    paging = (raw.is_last_page, raw.next_page_start, raw.limit)
    return StoredPage(digest, ids, failed, newest, paging, reused.hashes), rows


class PrimaryPageRead(NamedTuple):
    """A changed page of the primary's listing as read: the rows decoded (only those of other bytes than the kept
    page's, where most are the same), every id it lists, its rows' hashes (empty where unknown) and paging fields."""

    rows: list[tuple[str, PrimaryRepo]]
    ids: list[str]
    row_hashes: array[int]
    paging: tuple[Any, Any, Any]


def read_primary_page(
    body: bytes, kept_hashes: array[int], kept_ids: Iterable[str], projects: Projects, compared: bool
) -> PrimaryPageRead:
    """A changed page of the primary's listing, against the same page as kept (its rows' hashes and ids; no hashes:
    decoded whole), its rows as ``rows_of`` makes them: here in a worker, and on the loop (exporter/rest/poller.py)."""
    raw = raw_page(body)
    if raw is not None and kept_hashes:
        reused = rows_reused(raw, kept_hashes, kept_ids)
        if reused.worth_it:
            rows = rows_of(decode_repository_page(reused.fresh_body(raw)), projects, compared)
            ids = reused.with_ids([repo_id for repo_id, _ in rows])
            return PrimaryPageRead(rows, ids, reused.hashes, (raw.is_last_page, raw.next_page_start, raw.limit))
    page = decode_repository_page(body)
    rows = rows_of(page, projects, compared)
    hashes = row_hashes_of(raw.values) if raw is not None and len(raw.values) == len(rows) else array("q")
    return PrimaryPageRead(
        rows, [repo_id for repo_id, _ in rows], hashes, (page.is_last_page, page.next_page_start, page.limit)
    )


def _positions_of_none(items: list[str | None]) -> list[int]:
    """Where ``items`` holds None: found by list.index, since a changed page has one or two among a hundred."""
    positions: list[int] = []
    start = 0
    while True:
        try:
            start = items.index(None, start)
        except ValueError:
            return positions
        positions.append(start)
        start += 1


def _decoded_mirror_page(digest: bytes, body: bytes) -> tuple[StoredPage, PageColumns]:
    """Every row of a mirror page decoded."""
    ids: list[str] = []
    contents: list[str | None] = []
    metadatas: list[str | None] = []
    failures: array[int] = array("q")
    synced_times: array[float] = array("d")
    failed: dict[str, int] = {}
    # ISO dates and numeric ones apart: comparing datetimes needs no conversion per row (sync_seconds at the end).
    newest: datetime | None = None
    newest_number: float | None = None
    page = decode_sync_status_page(body)
    for repo in page.values:
        if repo.failed_sync_count > 0:
            failed[repo.external_repo_id] = repo.failed_sync_count
        when = repo.last_sync_date
        if type(when) is float:
            if newest_number is None or when > newest_number:
                newest_number = when
        elif when is not None and (newest is None or when > newest):  # type: ignore[operator]
            newest = when  # type: ignore[assignment]
        hashes = repo.hashes
        # Interned as the primary's are: the copies of an in-step farm (every node of every mirror) then hold one
        # string per repository and hash between them, not one each.
        contents.append(intern(hashes.content) if hashes and hashes.content is not None else None)
        metadatas.append(intern(hashes.metadata) if hashes and hashes.metadata is not None else None)
        synced = repo.synced_at()
        synced_times.append(sync_seconds(synced) if synced is not None else math.nan)
        failures.append(repo.failed_sync_count)
        ids.append(intern(repo.external_repo_id))
    newest_seconds = max((sync_seconds(when) for when in (newest, newest_number) if when is not None), default=None)
    paging = (page.is_last_page, page.next_page_start, page.limit)
    rows = PageColumns(ids, contents, metadatas, failures, synced_times)
    return StoredPage(digest, ids, failed, newest_seconds, paging), rows


# One (id, key) pair of strings per project, shared by its repositories rather than one copy each.
Projects = dict[tuple[int | None, str], tuple[str | None, str]]


def rows_of(
    page: Page[PrimaryRepositoryRow], projects: Projects, compared: bool = True
) -> list[tuple[str, PrimaryRepo]]:
    """A page of the primary's ``repos`` already decoded, as rows. Rows ``compared`` with the mirrors' (here, in a
    worker) keep the metadata hash and intern their strings, so a mirror in step shares them. The loop's own rows (the
    CI gate, push dating and the landing page read the listing) do neither: without the metadata hash 9 MB less at
    100,000 repositories, and the interpreter's table of interned strings would reach two million at 1,000,000
    repositories, each rebuild of which held the loop 0.2-0.3 s (bench/README.md)."""
    keep: Callable[[str], str] = intern if compared else str
    rows: list[tuple[str, PrimaryRepo]] = []
    for repo in page.values:
        hashes = repo.properties
        project = (repo.project.id, repo.project.key)
        if project not in projects:
            projects[project] = (str(project[0]) if project[0] is not None else None, project[1])
        project_id, project_key = projects[project]
        content = hashes.content_hash if hashes else None
        metadata = hashes.metadata_hash if hashes and compared else None
        row = PrimaryRepo(
            project_id,
            project_key,
            repo.slug,
            keep(content) if content is not None else None,
            keep(metadata) if metadata is not None else None,
        )
        rows.append((keep(str(repo.id)), row))
    return rows


_PROJECTS: Projects = {}


def feed(target: str, kind: str, walk: int, pages: list[tuple[int, bytes, bytes | None]]) -> None:
    """Pages ``(index, digest, body)`` of walk ``walk`` of ``target``; a body of None: the same bytes as page
    ``index`` of the target's current listing (the loop knows its digests). A new walk number starts the walk
    over."""
    store = STORE
    current = store.walks.get(target)
    if current is None or current.walk != walk:
        current = store.walks[target] = Walk(kind, walk)
    previous = store.listings.get(target)
    for index, digest, body in pages:
        if index != len(current.pages):
            raise FetchError(INVALID_RESPONSE, f"page {index} of a walk at page {len(current.pages)}")
        kept = previous.pages[index] if previous is not None and index < len(previous.pages) else None
        if body is None:
            if kept is None or kept.digest != digest:
                raise FetchError(INVALID_RESPONSE, f"page {index} is not in the worker: send it whole")
            current.pages.append(kept)
            continue
        if kind == MIRROR:
            listing = cast(MirrorColumns, previous.rows) if previous is not None else None
            stored, current.changed[index] = _mirror_page(digest, body, kept, listing)
        else:
            hashes, ids = (kept.row_hashes, kept.ids) if kept is not None else (array("q"), [])
            read = read_primary_page(body, hashes, ids, _PROJECTS, compared=True)
            current.changed[index] = read.rows
            stored = StoredPage(digest, read.ids, row_hashes=read.row_hashes)
        current.pages.append(stored)


def finish(target: str, walk: int) -> RepoSyncSummary | int:
    """The walk ``walk`` of ``target`` is whole: it becomes the target's listing, the rows of its changed pages
    replacing those of the same pages before. A mirror's summary, or the primary's repository count."""
    store = STORE
    current = store.walks.pop(target, None)
    if current is None or current.walk != walk:
        raise FetchError(INVALID_RESPONSE, f"walk {walk} of {target} is not in the worker")
    previous = store.listings.pop(target, None)
    rows: dict[str, PrimaryRepo] | MirrorColumns
    # Read whole: nothing kept to update. (A walk whose every page changed still updates the rows kept: a changed
    # mirror page brings only the rows whose bytes changed.)
    whole = previous is None
    # The ids whose rows changed, appeared or went (a comparison then reclassifies only those): rows that a changed
    # page lists as they were are not among them (a page changes for one row of its hundred).
    changed_ids: set[str] = set()
    if whole:
        rows = MirrorColumns(store.slots) if current.kind == MIRROR else {}  # every page new: nothing kept
    else:
        assert previous is not None
        rows = previous.rows
    listed_again: set[str] = set()
    for index, new_rows in current.changed.items():
        listed_again.update(current.pages[index].ids)
        if isinstance(rows, MirrorColumns):
            changed_ids.update(rows.update(cast(PageColumns, new_rows)))
        else:
            primary_page = cast(list[tuple[str, PrimaryRepo]], new_rows)
            for repo_id, row in primary_page:
                if rows.get(repo_id) != row:
                    rows[repo_id] = row
                    changed_ids.add(repo_id)
    if not whole:
        assert previous is not None
        # The ids of the pages that changed (or are no longer there) that no changed page lists now: gone (an id on
        # a page that did not change was on it before as well).
        for index, kept in enumerate(previous.pages):
            if index in current.changed or index >= len(current.pages):
                for repo_id in kept.ids:
                    if repo_id not in listed_again and repo_id in rows:
                        rows.pop(repo_id, None)
                        changed_ids.add(repo_id)
    listed = sum(len(page.ids) for page in current.pages)
    if len(rows) != listed and not whole:
        # An id listed on two pages (Bitbucket lists each once): the kept rows cannot be trusted, so the next walk
        # sends every page whole (the listing is dropped; the loop's digests no longer match anything).
        raise FetchError(INVALID_RESPONSE, f"{listed - len(rows)} ids listed twice: the listing is read again whole")
    if previous is not None and not current.changed and len(previous.pages) == len(current.pages):
        version, history = previous.version, previous.history
    else:
        version, history = next(_versions), {}
        if previous is not None and not whole:
            kept_history = list(previous.history.items())[-(HISTORY - 1) :]
            history = {**dict(kept_history), version: (previous.version, frozenset(changed_ids))}
    store.listings[target] = Listing(current.kind, current.pages, rows, walk, version, history)
    store.compact()
    if current.kind == PRIMARY:
        return len(rows)
    return _summary(current.pages, len(rows))


def _summary(pages: Iterable[StoredPage], repositories: int) -> RepoSyncSummary:
    failed: dict[str, int] = {}
    newest: float | None = None
    for page in pages:
        failed.update(page.failed)
        if page.newest is not None and (newest is None or page.newest > newest):
            newest = page.newest
    return RepoSyncSummary(repositories, len(failed), sum(failed.values()), newest, failed)


def forget(targets: Iterable[str]) -> None:
    """Targets the loop no longer polls (a node or mirror gone): their listings and reports go."""
    for target in targets:
        STORE.listings.pop(target, None)
        STORE.walks.pop(target, None)
        STORE.compared.pop(target, None)


def compare(job: CompareJob) -> DriftReport:
    """The target's listing against the primary's (``analyse`` by chunks, in one go here: this process has nothing
    else to do meanwhile)."""
    store = STORE
    primary = store.listings.get(job.primary)
    mirror = store.listings.get(job.target)
    if primary is not None and primary.walk > job.primary_walk:
        raise FetchError(INVALID_RESPONSE, NEWER_PRIMARY_WALK)
    if primary is None or primary.walk != job.primary_walk:
        raise FetchError(INVALID_RESPONSE, "this cycle's primary listing is not in the worker")
    if mirror is None:
        raise FetchError(INVALID_RESPONSE, f"the listing of {job.target} is not in the worker")
    key = (primary.version, mirror.version, job.scope, job.keep_all, job.per_node)
    last = store.compared.get(job.target)
    if last is not None and last.key == key and job.previous_since is None:
        # Neither listing changed: the same rows give the same report, read later.
        report = replace(last.report, inputs_at=job.inputs_at, rows_from=job.rows_from)
        last.report = report
        return report
    primary_rows_by_id = cast(dict[str, PrimaryRepo], primary.rows)
    mirror_rows = cast(Mapping[str, MirrorRepo], mirror.rows)
    changed = _changed_since(last, primary, mirror, key) if job.previous_since is None else None
    if last is not None and changed is not None:
        tally = last.tally
        tally.update(changed, primary_rows_by_id, mirror_rows, job.seen_at)
    else:
        since = job.previous_since if job.previous_since is not None else (last.report.diverged_since if last else {})
        tally = Tally(store.slots, job.scope, job.keep_all, job.per_node)
        tally.rebuild(primary_rows_by_id, mirror_rows, since, job.seen_at)
    report = tally.report(job.inputs_at, job.rows_from)
    store.compared[job.target] = Compared(key, report, tally)
    return report


def _changed_since(
    last: Compared | None, primary: Listing, mirror: Listing, key: tuple[object, ...]
) -> set[str] | None:
    """The ids to reclassify for ``last``'s analysis to be the one of the listings now; None: analyse all of them
    (no analysis yet, other settings, the worker's ids compacted since, or changes the listings no longer tell)."""
    if last is None or last.key[2:] != key[2:] or last.tally.slots is not STORE.slots:
        return None
    primary_version, mirror_version = cast(tuple[int, int], last.key[:2])
    from_primary = primary.changed_since(primary_version)
    from_mirror = mirror.changed_since(mirror_version)
    if from_primary is None or from_mirror is None:
        return None
    return from_primary | from_mirror


def union_of(nodes: list[tuple[str, dict[str, float]]], keep_all: bool) -> DriftReport:
    """The farm's report from the latest reports of its nodes (drift.union): ``(target, starts)``, where ``starts``
    are the divergences the loop dated from their pushes on that node's report (exporter/rest/push_dating.py)."""
    reports: list[DriftReport] = []
    for target, starts in nodes:
        compared = STORE.compared.get(target)
        if compared is None:
            raise FetchError(INVALID_RESPONSE, f"the report of {target} is not in the worker")
        reports.append(compared.report.dated(starts))
    return union(reports, keep_all)


# --- a mirror's (or node's) listing walked here, in the worker ---------------------------------------------------


def digest(body: bytes) -> bytes:
    """A strong hash of a page: BLAKE3, a cryptographic hash like SHA-256 and twice as fast on a page (9.5 us
    against 22.4 for 39 KB on the benchmark's machine, SHA-256 with the CPU's SHA instructions). Every page of every
    walk is hashed: SHA-256 was a tenth of a quiet cycle's CPU in the worker (bench/README.md)."""
    return blake3(body).digest()


@dataclass(frozen=True)
class ListingWalk:
    """What the loop sends for one walk of ``target``'s repoSyncStatus at ``url``: the credentials (over the worker's
    socket, never on a command line), the affinity cookies to send and the rows the walk may bring."""

    target: str
    url: str
    credentials: Credentials
    cookies: dict[str, str]
    max_rows: int
    http: HttpSetup


@dataclass(frozen=True)
class WalkOutcome:
    """What the loop gets back: the listing's summary, or the FetchError that ended the walk; and, either way, the
    requests and bytes it took, the host's clock from its latest answer and the affinity cookies after it."""

    summary: RepoSyncSummary | None
    error: FetchError | None
    traffic: TrafficStats
    clock: ClockReading | None
    cookies: dict[str, str]


_walk_numbers = itertools.count(1)
# The worker's session, rebuilt when the loop's HTTP setup changes (a reload of poll or tls).
_http: tuple[HttpSetup, aiohttp.ClientSession] | None = None


def _session(setup: HttpSetup) -> aiohttp.ClientSession:
    global _http
    if _http is not None and _http[0] == setup and not _http[1].closed:
        return _http[1]
    if _http is not None:
        stale = _http[1]
        # Closed once the walks still on it end (aiohttp closes a session's idle connections at once).
        asyncio.get_running_loop().call_later(
            setup.poll.timeout_seconds + 1, lambda: asyncio.ensure_future(stale.close())
        )
    session = http_session(setup)
    _http = (setup, session)
    return session


async def walk_listing(job: ListingWalk) -> WalkOutcome:
    """Walk ``job.target``'s listing here: each page hashed, an unchanged one (the same bytes as the same page of the
    listing held) followed by its kept paging fields and rows, a changed one decoded; the walk becomes the listing
    when it is whole (``finish``)."""
    client = BitbucketClient(_session(job.http), job.http.poll)
    client.max_rows = lambda: job.max_rows
    affinity = Affinity(dict(job.cookies))
    number = next(_walk_numbers)
    walk = STORE.walks[job.target] = Walk(MIRROR, number)
    previous = STORE.listings.get(job.target)

    def decode(body: bytes) -> Page[bytes]:
        index = len(walk.pages)
        page_digest = digest(body)
        kept = previous.pages[index] if previous is not None and index < len(previous.pages) else None
        same = kept is not None and kept.digest == page_digest
        # As the loop's pages are taken (``feed``): an unchanged page goes by its digest alone.
        feed(job.target, MIRROR, number, [(index, page_digest, None if same else body)])
        stored = walk.pages[-1]
        return Page([], *stored.paging, row_count=len(stored.ids))

    summary: RepoSyncSummary | None = None
    error: FetchError | None = None
    try:
        async for _ in client.walk(URL(job.url), job.credentials, decode, None, affinity):
            pass
        done = finish(job.target, number)
        assert isinstance(done, RepoSyncSummary)
        summary = done
    except FetchError as exc:
        error = exc
    finally:
        if STORE.walks.get(job.target) is walk:
            del STORE.walks[job.target]
    return WalkOutcome(summary, error, client.stats, client.clock(job.url), affinity.cookies)
