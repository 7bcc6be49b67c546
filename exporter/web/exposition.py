"""The /metrics body, rendered on the event loop and served from wherever the scrape arrives.

A rendering walks every collector and encodes ~1,250 series at 100k repositories x 3 mirrors x 3 nodes: 7-9 ms of
CPU. Scrapes must not wait for it, nor for the polls' work on the event loop (bench/README.md, "Node by node"), so the
loop keeps a rendering at most a second old (and renders again within ``CHECK_SECONDS`` of a new drift
report) while anybody scrapes, and the scrape thread (exporter/web/scrape_thread.py) serves it as it is.

Only the lag lines change between two renderings without anything being polled: a lag is ``now - since`` while
the divergence lasts. They are kept apart and written at each scrape with the scrape's time, so a lag is exact
whatever the rendering's age; everything else is at most a second old, as if Prometheus had scraped a
second earlier.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from prometheus_client import CollectorRegistry, utils
from prometheus_client.exposition import choose_encoder

# Series that grow by a second each second while their value is above 0 (``max(0, now - since)`` in the collectors).
GROWING = (
    b"bitbucket_mirror_sync_lag_seconds",
    b"bitbucket_mirror_node_sync_lag_seconds",
    b"bitbucket_mirror_repository_sync_lag_seconds",
    b"bitbucket_mirror_git_behind_seconds",
)
# How old a rendering a scrape thread may serve (the loop renders again at half that age, so this is only reached when
# the loop has been busy for a second); older, the scrape waits for a new one. 0: every scrape waits for the loop.
MAX_AGE_SECONDS = 2.0
# How often the loop looks for a new drift report: drift is shown as soon as it is known.
CHECK_SECONDS = 0.1
# Scrapes served on the event loop this close together share one rendering: a burst of simultaneous scrapes (an HA
# pair of Prometheus servers, several teams' Prometheus) costs one rendering, not one each queued behind the others.
# Unless a new drift report has arrived meanwhile.
SHARED_SECONDS = 0.2
# Nobody has asked for this content type for so long: stop rendering it.
IDLE_SECONDS = 300.0
# The Accept headers of Prometheus (2.x and 3.x ask for OpenMetrics first) and of a client that says nothing.
PRIMED = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "",
)

log = logging.getLogger("exporter")
# How both exposition formats write a value: a growing line must read as if the encoder had written it.
go_float = cast(Callable[[float], str], utils.floatToGoString)

Encoder = Callable[[CollectorRegistry], bytes]
GROWING_LINE = re.compile(rb"^(?:" + b"|".join(GROWING) + rb")(?:\{[^\n]*\})? ([^ \n]+)$", re.MULTILINE)


@dataclass(frozen=True)
class Rendering:
    """One encoding of the registry: fixed ``parts`` with growing lag lines between them (``prefix``, value at
    ``at``, the collectors' clock). Immutable, so the scrape thread reads it without a lock."""

    at: float
    made: float  # time.monotonic() when rendered
    reports: tuple[int, ...]
    parts: tuple[bytes, ...]
    growing: tuple[tuple[bytes, float], ...]

    @classmethod
    def of(cls, exposition: bytes, at: float, reports: tuple[int, ...]) -> Rendering:
        parts: list[bytes] = []
        growing: list[tuple[bytes, float]] = []
        start = 0
        for line in GROWING_LINE.finditer(exposition):
            value = float(line[1])
            if value > 0:  # 0: nothing diverges, and it stays 0 until the next poll says otherwise
                parts.append(exposition[start : line.start()])
                growing.append((exposition[line.start() : line.start(1)], value))
                start = line.end() + 1
        parts.append(exposition[start:])
        return cls(at, time.monotonic(), reports, tuple(parts), tuple(growing))

    def body(self, now: float) -> bytes:
        if not self.growing:
            return self.parts[0]
        elapsed = max(0.0, now - self.at)
        pieces: list[bytes] = []
        for part, (prefix, value) in zip(self.parts, self.growing, strict=False):
            grown = value + elapsed
            # Below a million, Go writes a float as Python's repr does (go_float's own fast path, without the call).
            pieces += (part, prefix, (repr(grown) if grown < 1e6 else go_float(grown)).encode(), b"\n")
        pieces.append(self.parts[-1])
        return b"".join(pieces)


class Exposition:
    """The latest rendering of each content type scrapers ask for. The event loop renders (collectors read the
    exporter's state, which only the loop changes); any thread may serve."""

    def __init__(
        self,
        registry: CollectorRegistry,
        reports: Callable[[], tuple[int, ...]],
        clock: Callable[[], float] = time.time,
        ready: Callable[[], bool] = lambda: True,
        max_age: float = MAX_AGE_SECONDS,
    ) -> None:
        self._max_age = max_age
        self._registry = registry
        self._reports = reports
        self._clock = clock
        self._ready = ready
        # Content types whose latest rendering was made before the exporter was ready.
        self._before_ready: set[str] = set()
        # Content type -> (encoder, when last asked for, time.monotonic()). Both dicts are shared with the scrape
        # threads without a lock (a contended lock would cost a scrape a wait for the GIL): each access is one
        # dict operation, and the loop iterates over copies.
        self._wanted: dict[str, tuple[Encoder, float]] = {}
        self._latest: dict[str, Rendering] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failing = False

    def now(self) -> float:
        return self._clock()

    def render(self, content_type: str, encoder: Encoder) -> Rendering:
        """On the event loop: encode the registry now."""
        at, reports, ready = self._clock(), self._reports(), self._ready()
        rendering = Rendering.of(encoder(self._registry), at, reports)
        self._latest[content_type] = rendering
        (self._before_ready.discard if ready else self._before_ready.add)(content_type)
        return rendering

    def show_ready(self) -> None:
        """On the event loop, when /-/ready is about to say ready: a scrape right after it must show the polls that
        made it so, not a rendering up to a second older (with ``max_age`` 0 every scrape renders anyway)."""
        if self._max_age <= 0:
            return
        wanted = dict(self._wanted)
        for content_type, encoder in [(t, wanted[t][0]) for t in list(self._before_ready) if t in wanted]:
            self.render(content_type, encoder)

    def rendered_since(self, made: float) -> bool:
        """Whether every content type's latest rendering was made at or after ``made`` (monotonic): a scrape now
        shows what the state held then (a test waits for this instead of rendering every scrape afresh)."""
        latest = list(self._latest.values())
        return bool(latest) and all(rendering.made >= made for rendering in latest)

    def current(self, content_type: str, encoder: Encoder, young: float) -> Rendering | None:
        """The latest rendering if at most ``young`` seconds old (new drift reports are the loop's to notice:
        ``on_loop`` and ``keep_fresh``); records that somebody wants this content type."""
        self._wanted[content_type] = (encoder, time.monotonic())
        latest = self._latest.get(content_type)
        if latest is None or time.monotonic() - latest.made > young:
            return None
        return latest

    def on_loop(self, content_type: str, encoder: Encoder, young: float) -> Rendering:
        """For a scrape served on the event loop: the latest rendering, or a new one."""
        latest = self.current(content_type, encoder, young)
        if latest is None or latest.reports != self._reports():
            latest = self.render(content_type, encoder)
        return latest

    def from_thread(self, content_type: str, encoder: Encoder, timeout: float) -> Rendering | None:
        """For a scrape served off the event loop: the latest rendering if young enough, else one the loop makes
        for it (None if the loop does not within ``timeout``)."""
        latest = self.current(content_type, encoder, self._max_age) if self._max_age > 0 else None
        if latest is not None or self._loop is None:
            return latest
        made: concurrent.futures.Future[Rendering] = concurrent.futures.Future()

        def render() -> None:
            if made.set_running_or_notify_cancel():
                try:
                    made.set_result(self.on_loop(content_type, encoder, SHARED_SECONDS))
                except Exception as exc:  # a collector's failure: the scrape answers 500 with it
                    made.set_exception(exc)

        try:
            self._loop.call_soon_threadsafe(render)
            return made.result(timeout)
        except (RuntimeError, concurrent.futures.TimeoutError):  # the loop is closed, or too busy to answer
            made.cancel()
            return None

    def start(self) -> None:
        """On the event loop, before any scrape thread runs: a rendering of what Prometheus and plain clients ask for
        is there for the very first scrape."""
        self._loop = asyncio.get_running_loop()
        if self._max_age <= 0:
            return  # every scrape asks for its own rendering
        for accept in PRIMED:
            primed, content_type = choose_encoder(accept)
            self._wanted[content_type] = (primed, time.monotonic())
            if content_type not in self._latest:
                self.render(content_type, primed)

    async def keep_fresh(self) -> None:
        """On the event loop while the exporter runs, after ``start``: render each wanted content type at half the
        age a scrape thread may serve, and at once when a drift report is new (with ``max_age`` 0, never: scrapes
        ask)."""
        if self._max_age <= 0:
            return
        try:
            while True:
                now, reports = time.monotonic(), self._reports()
                for content_type, (_, asked) in list(self._wanted.items()):
                    if now - asked > IDLE_SECONDS:
                        self._wanted.pop(content_type, None)
                        self._latest.pop(content_type, None)
                wanted = [(t, e, self._latest.get(t)) for t, (e, _) in list(self._wanted.items())]
                for content_type, encoder, latest in wanted:
                    if latest is None or now - latest.made >= self._max_age / 2 or latest.reports != reports:
                        try:
                            self.render(content_type, encoder)
                            self._failing = False
                        except Exception:
                            # A collector's bug: every scrape answers 500 with it meanwhile; logged once.
                            if not self._failing:
                                log.exception("rendering /metrics failed")
                            self._failing = True
                await asyncio.sleep(CHECK_SECONDS)
        finally:
            self._loop = None
