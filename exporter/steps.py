"""Long work on the event loop, in steps of bounded time: after each piece, ``Steps.done_piece`` yields to the loop
once the current step has run its share, so no step holds the loop (and every scrape) longer than that and a piece.

By time rather than by a count of pieces: pieces differ in cost (a changed page of the primary's listing costs ten
times an unchanged one; a per-repository family's piece ten times a gauge's), so a count bounded nothing."""

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
