"""Long work on the event loop, in steps of bounded time: after each piece, ``Steps.done_piece`` yields to the loop
once the current step has run its share, so no step holds the loop (and every scrape) longer than that and a piece.

By time rather than by a count of pieces: pieces differ in cost (a changed page of the primary's listing costs ten
times an unchanged one; a per-repository family's piece ten times a gauge's), so a count bounded nothing.

Many short steps ready at once hold the loop as one long step does: ``PassRation`` lets only a few of them go on in
one pass of the loop (the requests a poll starts together)."""

from __future__ import annotations

import asyncio
import time


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
    """At most ``per_pass`` callers of ``turn`` go on in one pass of the event loop; the others go on in later passes.
    asyncio runs, in one pass, every callback that was ready when the pass began: tasks started together (every
    source of every target on the same grid tick) all take their first step in the same pass, however short each."""

    def __init__(self, per_pass: int) -> None:
        self._per_pass = per_pass
        self._taken = 0
        self._renewal_due = False

    async def turn(self) -> None:
        # What is awaited is a pass of the loop itself (the renewal runs early in the next one), which sleep(0) is.
        while self._taken >= self._per_pass:  # noqa: ASYNC110
            await asyncio.sleep(0)
        self._taken += 1
        if not self._renewal_due:
            self._renewal_due = True
            asyncio.get_running_loop().call_soon(self._renew)

    def _renew(self) -> None:
        self._taken = 0
        self._renewal_due = False
