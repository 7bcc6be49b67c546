"""The /metrics body: the latest rendering of each content type scrapers ask for, at most a second old.

A rendering walks every collector and encodes ~1,600 series at 100k repositories x 3 mirrors x 3 nodes: 8-10 ms of CPU,
20-40 ms of wall time on a machine whose cores the polls' processes share. A scrape must not wait for that, so the loop
renders each wanted content type again once its latest rendering is ``RENDER_AT_SECONDS`` old (and within
``CHECK_SECONDS`` of a new drift report) while a scrape of it is expected (``Wanted.expecting``: from 0.8 s before a
scraper's next scrape is due, judged by the gap between its last two, until it comes or is long overdue), and a scrape
serves the latest rendering as it is while it is at most ``MAX_AGE_SECONDS`` old (else waits for a new one), even when
a drift report landed since: the loop renders that one within ``CHECK_SECONDS`` for the scrapes expected, and a
scrape that waited for it would wait behind the work that came with the report (the farm's other reports arriving,
their push dating: 30-65 ms at 100k x 3 x 3, where the rendering alone takes 8-10 ms). So a Prometheus scraping every
30 s costs about two renderings a scrape, not one every 0.8 s between its scrapes, and a drift report is on /metrics
at most a second after it landed. A rendering
takes the metric families a few at a time, at most ``STEP_SECONDS`` of work between two yields to the event loop, so no
rendering holds the loop: each family is read whole from the state as it is when its turn comes (a rendering spans
milliseconds; a drift report that lands in between asks for the next rendering at once).

Each rendering is also kept gzip-compressed, compressed piece by piece as it is made (level 1: about 0.3 ms of the
~150 KB at 100k x 3 x 3, ten times smaller), for scrapers that accept it: Prometheus asks for gzip on every scrape,
and a tenth of the bytes is a tenth of the TLS work on both ends.

A lag (``now - since`` while a divergence lasts) is therefore at most a second short: its resolution is the poll
interval anyway. A query that wants it to the second reads the ``..._first_seen_timestamp_seconds`` series beside
each lag family and computes ``time() - ...`` (Prometheus' instrumentation guide prefers timestamps to durations).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder

from exporter.steps import Steps

# How old a rendering a scrape may be served.
MAX_AGE_SECONDS = 1.0
# At this age the loop renders again, so an idle loop always has one younger than MAX_AGE_SECONDS for the next scrape.
RENDER_AT_SECONDS = 0.8
# How often the loop looks for a new drift report: drift is shown as soon as it is known.
CHECK_SECONDS = 0.1
# Work on one rendering between two yields to the event loop.
STEP_SECONDS = 0.001
# Samples of one family encoded in one go: about a millisecond.
PIECE_SAMPLES = 64
# gzip's fastest level: a rendering's body is mostly repeated label names, which it already shrinks tenfold.
GZIP_LEVEL = 1
GZIP_WBITS = 16 + zlib.MAX_WBITS  # a gzip header and trailer around the deflate stream
# How OpenMetrics ends a body: once, after the last family.
OPENMETRICS_END = b"# EOF\n"
# Nobody has asked for this content type for so long: forget it.
IDLE_SECONDS = 300.0
# A scrape overdue by more than its gap (and at least this long): stop rendering ahead for it.
OVERDUE_SECONDS = 5.0
# The Accept headers of Prometheus (2.x and 3.x ask for OpenMetrics first) and of a client that says nothing.
PRIMED = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "",
)

log = logging.getLogger("exporter")

Encoder = Callable[[CollectorRegistry], bytes]


def pieces(family: Metric) -> Iterator[tuple[Metric, bool]]:
    """The family in pieces of at most PIECE_SAMPLES samples (a per-repository family has hundreds): each piece a
    family of the same name, and whether it continues the one before (its encoding's head is then dropped)."""
    if len(family.samples) <= PIECE_SAMPLES:
        yield family, False
        return
    for start in range(0, len(family.samples), PIECE_SAMPLES):
        piece = copy.copy(family)
        piece.samples = family.samples[start : start + PIECE_SAMPLES]
        yield piece, start > 0


def without_head(encoded: bytes) -> bytes:
    """An encoded family without its comment lines (HELP, TYPE, UNIT): what a continued piece adds is samples."""
    lines = encoded.split(b"\n")
    first = next(i for i, line in enumerate(lines) if not line.startswith(b"# ") or line == b"# EOF")
    return b"\n".join(lines[first:])


class Families:
    """Some metric families as a registry to an encoder (prometheus_client's encoders read ``collect()`` only)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


# Scrapers remembered per content type (by address): a few Prometheus servers, not every client that ever asked.
MAX_SCRAPERS = 64


@dataclass
class Wanted:
    """A content type scrapers ask for: its encoder, and for each scraper (its address) when it last asked and the
    gap before that. Each Prometheus scrapes on an interval of its own, so the next scrape is predicted per scraper
    (two servers of an HA pair alternate: their merged gaps would predict neither)."""

    encoder: Encoder
    asked: float
    scrapers: dict[str, tuple[float, float | None]] = field(default_factory=dict)

    def asked_again(self, now: float, scraper: str) -> None:
        self.asked = now
        last = self.scrapers.pop(scraper, None)
        self.scrapers[scraper] = (now, None if last is None else now - last[0])
        if len(self.scrapers) > MAX_SCRAPERS:
            del self.scrapers[next(iter(self.scrapers))]  # the one that asked least recently

    def expecting(self, now: float, render_at: float) -> bool:
        """Whether a scrape is expected soon enough that a rendering made now would serve it: for some scraper, from
        ``render_at`` before its next is due (its own gap after its last) until that one is overdue by its gap."""
        for asked, gap in self.scrapers.values():
            if gap is not None and asked + gap - render_at <= now <= asked + gap + max(gap, OVERDUE_SECONDS):
                return True
        return False


@dataclass(frozen=True)
class Rendering:
    """One encoding of the registry."""

    # The monotonic clock when the rendering began: it shows the state as it was then, or later.
    made: float
    reports: tuple[int, ...]  # the analyses it shows (a new one asks for a new rendering)
    body: bytes
    gzipped: bytes  # the same body, gzip-compressed


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header accepts gzip (``gzip`` or ``x-gzip``, unless given ``q=0``)."""
    for coding in accept_encoding.split(","):
        name, _, parameters = coding.partition(";")
        if name.strip().lower() not in ("gzip", "x-gzip"):
            continue
        weight = parameters.strip().lower()
        if not weight.startswith("q="):
            return True
        try:
            return float(weight[2:]) > 0
        except ValueError:
            return False
    return False


class Exposition:
    """The latest rendering of each content type scrapers ask for; everything here runs on the event loop."""

    def __init__(
        self,
        registry: CollectorRegistry,
        reports: Callable[[], tuple[int, ...]],
        ready: Callable[[], bool] = lambda: True,
        max_age: float = MAX_AGE_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._monotonic = monotonic
        self._max_age = max_age
        self._registry = registry
        self._reports = reports
        self._ready = ready
        # Content types whose latest rendering was made before the exporter was ready.
        self._before_ready: set[str] = set()
        self._wanted: dict[str, Wanted] = {}
        self._latest: dict[str, Rendering] = {}
        # Renderings under way, by content type: scrapes that come meanwhile wait for the same one.
        self._rendering: dict[str, asyncio.Future[Rendering]] = {}
        self._failing = False

    async def render(self, content_type: str, encoder: Encoder) -> Rendering:
        """A new rendering, made a few families at a time; scrapes that want one meanwhile share it."""
        pending = self._rendering.get(content_type)
        if pending is None:
            pending = self._rendering[content_type] = asyncio.ensure_future(self._render(content_type, encoder))
            pending.add_done_callback(lambda _: self._rendering.pop(content_type, None))
        return await asyncio.shield(pending)

    async def render_begun_now(self, content_type: str, encoder: Encoder) -> Rendering:
        """A rendering begun after this call: one already under way began earlier and may miss what changed since
        (a new drift report, the polls that made the exporter ready)."""
        asked = self._monotonic()
        rendering = await self.render(content_type, encoder)
        if rendering.made < asked:
            rendering = await self.render(content_type, encoder)
        return rendering

    async def _render(self, content_type: str, encoder: Encoder) -> Rendering:
        began, reports, ready = self._monotonic(), self._reports(), self._ready()
        parts: list[bytes] = []
        compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, GZIP_WBITS)
        compressed: list[bytes] = []
        steps = Steps(STEP_SECONDS)
        ends = False
        for family in self._registry.collect():
            for piece, continued in pieces(family):
                encoded = encoder(cast(CollectorRegistry, Families([piece])))
                # Each part of an OpenMetrics body ends as a whole body does: only the last keeps its end.
                ends = encoded.endswith(OPENMETRICS_END)
                part = (without_head(encoded) if continued else encoded).removesuffix(OPENMETRICS_END)
                parts.append(part)
                compressed.append(compressor.compress(part))
                await steps.done_piece()
        ending = OPENMETRICS_END if ends else b""
        compressed += (compressor.compress(ending), compressor.flush())
        rendering = Rendering(began, reports, b"".join(parts) + ending, b"".join(compressed))
        self._latest[content_type] = rendering
        (self._before_ready.discard if ready else self._before_ready.add)(content_type)
        return rendering

    async def show_ready(self) -> None:
        """When /-/ready is about to say ready: a scrape right after it must show the polls that made it so, not a
        rendering up to a second older."""
        wanted = dict(self._wanted)
        for content_type, encoder in [(t, wanted[t].encoder) for t in list(self._before_ready) if t in wanted]:
            await self.render_begun_now(content_type, encoder)

    def rendered_since(self, made: float) -> bool:
        """Whether a scrape now shows what the state held at ``made`` (monotonic), whatever it asks for: every
        content type's latest rendering was made at or after then, or is too old to be served (a scrape waits for a
        new one). A test waits for this."""
        latest, now = list(self._latest.values()), self._monotonic()
        return bool(latest) and all(r.made >= made or now - r.made > self._max_age for r in latest)

    async def serve(self, content_type: str, encoder: Encoder, scraper: str = "") -> Rendering:
        """For a scrape (by ``scraper``, its address): the latest rendering while it is at most ``max_age`` old
        (drift reports that landed since included: they are rendered by ``keep_fresh``), else a new one."""
        now = self._monotonic()
        wanted = self._wanted.setdefault(content_type, Wanted(encoder, now))
        wanted.asked_again(now, scraper)
        latest = self._latest.get(content_type)
        if (
            latest is None
            or self._monotonic() - latest.made > self._max_age
            or (content_type in self._before_ready and self._ready())
        ):
            # A rendering made before the exporter was ready is not served once it is: the first scrape after
            # shows the polls that made it so.
            latest = await self.render_begun_now(content_type, encoder)
        return latest

    async def start(self) -> None:
        """A rendering of what Prometheus and plain clients ask for is there for the very first scrape."""
        for accept in PRIMED:
            primed, content_type = choose_encoder(accept)
            self._wanted.setdefault(content_type, Wanted(primed, self._monotonic()))
            if content_type not in self._latest:
                await self.render(content_type, primed)

    def due(self) -> list[tuple[str, Encoder]]:
        """The content types to render now: a scrape of it is expected, and its latest rendering would be too old
        for it or misses a drift report. Those nobody asked for in IDLE_SECONDS are forgotten."""
        now, reports = self._monotonic(), self._reports()
        render_at = self._max_age * RENDER_AT_SECONDS / MAX_AGE_SECONDS
        for content_type, wanted in list(self._wanted.items()):
            if now - wanted.asked > IDLE_SECONDS:
                self._wanted.pop(content_type, None)
                self._latest.pop(content_type, None)
        due = []
        for content_type, wanted in self._wanted.items():
            latest = self._latest.get(content_type)
            stale = latest is None or now - latest.made >= render_at or latest.reports != reports
            if stale and wanted.expecting(now, render_at):
                due.append((content_type, wanted.encoder))
        return due

    async def keep_fresh(self) -> None:
        """While the exporter runs, after ``start``: render each content type a scrape is expected for before its
        latest rendering is too old to serve, and at once when a drift report is new."""
        while True:
            for content_type, encoder in self.due():
                try:
                    await self.render(content_type, encoder)
                    self._failing = False
                except Exception:
                    # A collector's bug: every scrape answers 500 with it meanwhile; logged once.
                    if not self._failing:
                        log.exception("rendering /metrics failed")
                    self._failing = True
            await asyncio.sleep(CHECK_SECONDS)
