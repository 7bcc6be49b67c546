"""Long work on the event loop, in steps of bounded time: after each piece, ``Steps.done_piece`` yields to the loop
once the current step has run its share, so no step holds the loop (and every scrape) longer than that and a piece.

By time rather than by a count of pieces: pieces differ in cost (a changed page of the primary's listing costs ten
times an unchanged one; a per-repository family's piece ten times a gauge's), so a count bounded nothing.

Many short steps ready at once hold the loop as one long step does: ``PassRation`` lets only a few of them go on in
one pass of the loop (the sources, requests and answers of a poll that come together)."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import deque


class Steps:
    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._began = time.perf_counter()

    async def done_piece(self) -> None:
        """A piece of work is done: yield to the loop if this step has run ``seconds`` or more (a new one begins)."""
        if time.perf_counter() - self._began >= self._seconds:
            await asyncio.sleep(0)
            self._began = time.perf_counter()


class PassRation:
    """At most ``per_pass`` callers of ``turn`` go on in one pass of the event loop; the others wait, in order, for
    later passes. asyncio runs, in one pass, every callback that was ready when the pass began: tasks started together
    (every source of every target on the same grid tick) all take their first step in the same pass, however short
    each, and answers that arrived together are all read in one. ``per_pass`` None: no limit (``unrationed``)."""

    def __init__(self, per_pass: int | None) -> None:
        self._per_pass = per_pass
        self._taken = 0
        self._renewal_due = False
        self._waiting: deque[asyncio.Future[None]] = deque()

    async def turn(self) -> None:
        if self._per_pass is None:
            return
        if self._taken < self._per_pass and not self._waiting:
            self._take()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self._renewal()
        await waiter  # resolved by a renewal, which took the turn for it

    def _take(self) -> None:
        self._taken += 1
        self._renewal()

    def _renewal(self) -> None:
        if not self._renewal_due:
            self._renewal_due = True
            asyncio.get_running_loop().call_soon(self._renew)

    def _renew(self) -> None:
        """Early in a pass: the turns of the next one go to the callers waiting longest (they run in that pass)."""
        self._renewal_due = False
        self._taken = 0
        while self._waiting and self._taken < (self._per_pass or 0):
            waiter = self._waiting.popleft()
            if not waiter.done():  # else given up (cancelled)
                waiter.set_result(None)
                self._take()


# Per event loop (tests run several, one after another): its waiters' futures and renewals belong to it.
_RATIONS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, PassRation] = weakref.WeakKeyDictionary()
# Steps that may start in one pass: a request begun (built, a pooled connection taken, written) or an answer read
# costs the loop 0.1-0.3 ms, a source's first step about 0.1 ms. A poll starts about forty sources at once (every
# source of every mirror and node on the same grid tick), then fifty push lookups, and their answers arrive together
# while the loop runs a long step: in one pass each burst held the loop, and every scrape waiting, 8-13 ms at
# 100k x 3 x 3 (bench/README.md). Four a pass.
STARTS_PER_PASS = 4


def unrationed() -> None:
    """The running loop lets every start go on at once: a worker process's loop (exporter/workers.py), which serves
    no scrape. Its walks' answers come by the hundred, and each turn taken cost a pass of the loop more (the renewal):
    2-9% of the CPU of a worker's walks, measured alone (bench/README.md)."""
    _RATIONS[asyncio.get_running_loop()] = PassRation(None)


def starts() -> PassRation:
    """The running loop's ration of starts: sources started (``sources.run_source``), push lookups started
    (exporter/rest/push_dating.py), requests begun and answers read (exporter/rest/client.py)."""
    loop = asyncio.get_running_loop()
    ration = _RATIONS.get(loop)
    if ration is None:
        ration = _RATIONS[loop] = PassRation(STARTS_PER_PASS)
    return ration
