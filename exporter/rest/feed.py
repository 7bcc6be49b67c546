"""The event loop's side of the listings' work: each page's bytes go to the target's worker process
(exporter/rest/listing_work.py), unless they hash as the same page of the previous walk that worker holds.

One ``ListingFeed`` per listing (the primary's, once per worker; a mirror's or node's) lives as long as its poller:
it remembers the pages' digests of the last walk the worker took whole, and the worker's ``generation`` then (a
restarted worker holds nothing: every page goes whole again). Pages go in batches of at most ``BATCH_BYTES`` bytes
or ``BATCH_PAGES`` pages, a few batches in flight while the walk reads on, so the worker decodes while the loop
downloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from exporter.rest.listing_work import digest, feed, finish, forget
from exporter.workers import Worker, WorkerLost

T = TypeVar("T")

# A quarter of a megabyte: a message of 1 MB (the first walk sends every page whole) took 5-50 ms of the loop to
# pickle and buffer on this benchmark's machine, where touching fresh memory is slow; at 256 KB none of the first walk
# at 1,000,000 repositories took 18 ms (bench/README.md).
BATCH_BYTES = 1 << 18
BATCH_PAGES = 256
IN_FLIGHT = 4

# Walk numbers, unique in the process: a worker tells this walk's pages from an abandoned one's.
_walk_numbers = itertools.count(1)


@dataclass(frozen=True)
class Held:
    """What the worker holds of this listing: the walk it took whole, in the worker's generation then."""

    generation: int
    walk: int
    digests: tuple[bytes, ...]


class ListingFeed:
    """One listing's pages on their way to ``worker`` under the name ``target``; ``kind`` is listing_work.PRIMARY or
    MIRROR."""

    def __init__(self, worker: Worker, target: str, kind: str) -> None:
        self.worker = worker
        self.target = target
        self.kind = kind
        self._held: Held | None = None
        # The worker generation that made the target's latest drift report (listing_work keeps its first-seen times).
        self.compared_generation: int | None = None

    def _still_held(self) -> Held | None:
        """What the worker holds of this listing, if it still does (it may have restarted since)."""
        held = self._held
        return held if held is not None and held.generation == self.worker.generation else None

    def held_walk(self) -> int | None:
        held = self._still_held()
        return held.walk if held is not None else None

    def start(self) -> Walk:
        return Walk(self, self._still_held())

    def took(self, held: Held | None) -> None:
        """What the worker holds after a walk: the walk, or (a walk that failed) nothing the loop may count on, so
        the next walk sends every page whole."""
        self._held = held

    async def forget(self) -> None:
        """The target is gone: the worker drops what it holds of it."""
        self._held = None
        with contextlib.suppress(WorkerLost):
            await self.worker.call(forget, [self.target])


class Walk:
    """One walk's pages, sent as they come; ``finish`` when the walk is whole (its summary from the worker)."""

    def __init__(self, listing: ListingFeed, held: Held | None) -> None:
        self._listing = listing
        self._held = held
        self._generation = listing.worker.generation
        self._number = next(_walk_numbers)
        self._digests: list[bytes] = []
        self._batch: list[tuple[int, bytes, bytes | None]] = []
        self._batch_bytes = 0
        self._in_flight: list[asyncio.Future[None]] = []

    async def add(self, body: bytes, page_digest: bytes | None = None) -> None:
        page_digest = page_digest if page_digest is not None else digest(body)
        index = len(self._digests)
        self._digests.append(page_digest)
        held = self._held
        same = held is not None and index < len(held.digests) and held.digests[index] == page_digest
        self._batch.append((index, page_digest, None if same else body))
        self._batch_bytes += 0 if same else len(body)
        if self._batch_bytes >= BATCH_BYTES or len(self._batch) >= BATCH_PAGES:
            await self._send()

    async def _send(self) -> None:
        listing = self._listing
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        call = listing.worker.call(feed, listing.target, listing.kind, self._number, batch)
        self._in_flight.append(asyncio.ensure_future(call))
        if len(self._in_flight) >= IN_FLIGHT:
            await self._worker_answer(self._in_flight.pop(0))

    async def _worker_answer(self, answer: Awaitable[T]) -> T:
        """What the worker answered; when it refused (or died), the next walk sends every page whole: what the loop
        held may no longer be what the worker holds (listing_work.finish drops a listing it cannot trust)."""
        try:
            return await answer
        except BaseException:
            self._listing.took(None)
            raise

    async def finish(self) -> Any:
        """The worker's summary of the whole walk (listing_work.finish); WorkerLost when the worker restarted
        during it."""
        listing = self._listing
        try:
            await self._send()
            while self._in_flight:
                await self._worker_answer(self._in_flight.pop(0))
        except BaseException:
            self.abandon()
            raise
        summary = await self._worker_answer(listing.worker.call(finish, listing.target, self._number))
        if self._listing.worker.generation != self._generation:
            raise WorkerLost("the worker restarted during the walk")
        self._listing.took(Held(self._generation, self._number, tuple(self._digests)))
        return summary

    def abandon(self) -> None:
        """The walk failed before it was whole: batches still in flight are let go (their errors are not news). The
        worker's listing is the previous walk's still (only ``finish`` replaces it), so what the loop held stays
        true: drift rides over a failed read against it, as against any last good value while fresh."""
        for future in self._in_flight:
            future.cancel()
            future.add_done_callback(_retrieve)
        self._in_flight = []


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
