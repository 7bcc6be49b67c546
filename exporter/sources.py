"""What every polled source shares, REST endpoints and JMX nodes alike: the error a poll fails with and its reasons,
``SourceState`` (a source's last good value and how polling went), ``run_source`` (one fetch, recorded, logged once
per change of state), the poll loop, the self-metrics every source renders, and the hand-off of replaced values to a
freeing thread.

Freshness (docs/metrics.md): a value is served while it was learned at most ``poll.stale_after_seconds`` ago, so
metrics ride over a failed poll or two; past that the collectors leave them out rather than serve them as current.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import queue
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from exporter import __version__
from exporter.steps import starts

log = logging.getLogger("exporter.poller")

T = TypeVar("T")

# Reasons, also documented in docs/metrics.md.
TIMEOUT = "timeout"
CONNECT_TIMEOUT = "connect_timeout"
CONNECTION = "connection"
DNS = "dns"
TLS = "tls"
TOO_LARGE = "too_large"
HTML_RESPONSE = "html_response"
INVALID_JSON = "invalid_json"
INVALID_RESPONSE = "invalid_response"
PAGE_LOOP = "page_loop"
PAGE_CAP = "page_cap"
# A listing walk (or one page) with far more rows than asked for or than poll.max_rows: refused before it fills memory.
TOO_MANY_ROWS = "too_many_rows"
# A password or token file that cannot be read (or is empty) when a request is made: rotated badly, unmounted.
CREDENTIALS = "credentials"
# A 3xx to Bitbucket's login page: credentials refused, or sent where Bitbucket takes none. Never followed.
LOGIN_PAGE = "login_page"
# Bitbucket locked the account behind a CAPTCHA (too many failed logins): every call fails until a person logs in.
CAPTCHA = "captcha"
# A bug in the exporter: counted, and the poll loop carries on.
UNEXPECTED = "unexpected"


def http_reason(status: int) -> str:
    return f"http_{status}"


class FetchError(Exception):
    def __init__(
        self, reason: str, detail: str, status: int | None = None, body: Any = None, learned: Any = None
    ) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.status = status
        # The parsed JSON body of an error response, when it had one (a starting mirror's /status sends its state).
        self.body = body
        # What the failed answer still told, kept as the source's value (run_source): a starting mirror's state.
        self.learned = learned

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled by its fields (a worker process raises it; exporter/workers.py): the default would rebuild it from
        its message alone."""
        return (type(self), (self.reason, self.detail, self.status, self.body, self.learned))


@dataclass
class SourceState(Generic[T]):
    """One endpoint (or small group of endpoints) of one target: the last good value and how polling went."""

    value: T | None = None
    success: bool | None = None  # None until the first poll finished
    duration_seconds: float = 0.0
    last_success_timestamp: float | None = None
    # When ``value`` was learned: the last success, or a failed answer that still told something (a starting
    # mirror's 503 carries its state).
    value_timestamp: float | None = None
    # When the fetch that gave ``value`` began: every page of a listing walk was requested at or after it (the CI
    # gate's proof that a row was read after a push; a walk's end proves nothing for its first pages).
    value_started_timestamp: float | None = None
    error_reason: str | None = None
    errors_total: dict[str, int] = field(default_factory=dict)
    # Asked only when needed (ref change activity), not every cycle: its age says nothing, only a failure does.
    on_demand: bool = False
    # Polled on an interval of its own (JMX, git mirrors, webhook statistics): served for at least three of them.
    own_interval: float | None = None

    @property
    def polled(self) -> bool:
        return self.success is not None

    def fresh(self, now: float, stale_after: float) -> T | None:
        """The value while served by the one freshness rule (``freshness``: ``stale_after`` is
        poll.stale_after_seconds); else None (not served)."""
        window = freshness(stale_after, self.own_interval)
        if self.value is None or self.value_timestamp is None or now - self.value_timestamp > window:
            return None
        return self.value


# --- Freeing replaced values off the event loop --------------------------------------------------------------------
# Dropping the last reference to a 100,000-repository snapshot deallocates half a million objects, tens of
# milliseconds during which the event loop answers no scrape. Moving the drop to another thread is not enough: one
# container's deallocation is a single call into C that keeps the GIL to the end. So this thread takes large
# containers apart item by item in Python, where the interpreter switches threads every few milliseconds.

_PENDING: queue.SimpleQueue[Any] = queue.SimpleQueue()
_STARTED = threading.Lock()
_thread: threading.Thread | None = None
# Containers smaller than this are dropped whole: their deallocation is short.
_LARGE = 256
# How deep into objects' attributes to look for large containers (an analysis -> its rows).
_DEPTH = 3
# Our own references to an object under inspection: the local name and getrefcount's argument.
_OURS = 2
# Items freed between two hand-overs of the GIL: under a millisecond of work. Smaller slices let scrapes in sooner
# but starve this thread while the poll is busy, and the memory it should free piles up (bench/README.md).
_SLICE = 1024


def _fields(obj: Any) -> list[str]:
    names = list(getattr(obj, "__dict__", {}))
    for cls in type(obj).__mro__:
        names.extend(n for n in getattr(cls, "__slots__", ()) if n not in ("__dict__", "__weakref__"))
    return names


def _dismantle(item: list[Any]) -> None:
    """Empty the large containers that only ``item`` (a one-element list, taken over) holds, a piece at a time.
    Anything someone else still references is left alone: dropping our reference would not free it anyway."""
    stack: list[tuple[Any, int]] = [(item.pop(), 0)]
    while stack:
        obj, depth = stack.pop()
        if sys.getrefcount(obj) > _OURS:
            continue
        if type(obj) is dict or type(obj) is list:
            container: dict[Any, Any] | list[Any] = obj
            while container:
                for _ in range(min(_SLICE, len(container))):
                    value = container.popitem()[1] if isinstance(container, dict) else container.pop()
                    if type(value) in (dict, list) and len(value) >= _LARGE:
                        stack.append((value, depth + 1))
                    del value
                # Hand the GIL over now rather than when the interpreter would (every 5 ms): a scrape waiting for
                # it waits a slice, not a switch interval.
                time.sleep(0)
        elif depth < _DEPTH and not isinstance(obj, (str, bytes, int, float, tuple, frozenset, set)):
            for name in _fields(obj):
                value = getattr(obj, name, None)
                if value is None or isinstance(value, (str, bytes, int, float, bool)):
                    continue
                stack.append((value, depth + 1))
                del value
                with contextlib.suppress(AttributeError, TypeError):
                    object.__setattr__(obj, name, None)  # the stack's reference is now the only one of ours
        del obj


def _free_forever() -> None:
    while True:
        _dismantle([_PENDING.get()])


def free_later(*items: Any) -> None:
    """Take over references to ``items``; the caller must hold no other reference for this to help.

    Called on the event loop, the items go to the thread at the loop's next pass, when the step that replaced them has
    ended and dropped its own references (``del previous``): the thread then sees at once whether anything else still
    holds one. It used to wait for them instead, waking every millisecond for up to 50 ms for each value something else
    still held (most small ones), and took the GIL from the loop at each waking."""
    global _thread
    with _STARTED:
        if _thread is None:
            _thread = threading.Thread(target=_free_forever, name="free-snapshots", daemon=True)
            _thread.start()
    taken = list(items)
    try:
        asyncio.get_running_loop().call_soon(_hand_over, taken)
    except RuntimeError:  # no event loop here: the caller's references are its own business
        _hand_over(taken)


def _hand_over(taken: list[Any]) -> None:
    while taken:
        _PENDING.put(taken.pop())  # no name of ours holds it while the thread looks


# --- Running a source ---------------------------------------------------------------------------------------------


async def run_source(
    target: str,
    name: str,
    state: SourceState[T],
    fetch: Callable[[], Awaitable[T]],
    learned_at: Callable[[], float] | None = None,
) -> None:
    """Run one fetch, record its outcome and log only when the source's health changes: the one way a poller
    changes a source's state. ``learned_at`` dates a value derived from older readings (a farm's union over its nodes
    is as old as its oldest node's listing); a failure whose answer still told something (``FetchError.learned``: a
    starting mirror's 503 carries its state) keeps that as the value, dated now, while the source counts as failed."""
    # Sources start together (every source of every target on the same grid tick): a few a pass of the loop.
    await starts().turn()
    started, started_at = time.monotonic(), time.time()
    try:
        value = await fetch()
    except FetchError as exc:
        if exc.learned is not None:
            _replace_value(state, exc.learned, time.time())
        _record_failure(target, name, state, exc.reason, exc.detail)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        # A bug must not kill the poll loop; count it and keep serving the last good values.
        _record_failure(target, name, state, UNEXPECTED, type(exc).__name__)
        log.debug("unexpected error", extra={"target": target, "source": name}, exc_info=True)
    else:
        if state.success is False:
            log.info("poll recovered", extra={"target": target, "source": name, "after": state.error_reason})
        _replace_value(state, value, learned_at() if learned_at is not None else time.time())
        state.success = True
        state.error_reason = None
        state.last_success_timestamp = state.value_timestamp
        state.value_started_timestamp = started_at
    finally:
        state.duration_seconds = time.monotonic() - started


def _replace_value(state: SourceState[T], value: T, learned: float) -> None:
    """``value`` in place of the last one, in one assignment (a scrape sees one or the other), learned at ``learned``;
    the replaced one is freed off the event loop."""
    previous, state.value = state.value, value
    if previous is not value:
        free_later(previous)
    del previous
    state.value_timestamp = learned


def _record_failure(target: str, name: str, state: SourceState[Any], reason: str, detail: str) -> None:
    state.errors_total[reason] = state.errors_total.get(reason, 0) + 1
    if state.success is not False or state.error_reason != reason:
        log.warning("poll failed", extra={"target": target, "source": name, "reason": reason, "detail": detail})
    state.success = False
    state.error_reason = reason


class FirstCycle:
    """Lets another poller wait, boundedly, for this one's first cycle instead of skipping a cycle of its own."""

    def __init__(self, wait_seconds: float) -> None:
        self._done = asyncio.Event()
        self._wait_seconds = wait_seconds

    def set(self) -> None:
        self._done.set()

    async def wait(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), timeout=self._wait_seconds)


# --- The poll loop ------------------------------------------------------------------------------------------------


def next_start(now: float, interval: float, anchor: float) -> float:
    """The first time at or after ``now`` on the grid ``anchor + k * interval``."""
    return anchor + math.ceil((now - anchor) / interval) * interval


async def poll_forever(
    poll: Callable[[], Awaitable[None]],
    interval: float,
    anchor: float | None = None,
    first_at: float | None = None,
) -> None:
    """Poll now (or at ``first_at``, monotonic: a target carried over a reload keeps its phase), then every
    ``interval`` seconds until cancelled (its supervisor stops it). With an ``anchor`` (monotonic), later cycles start
    on the grid ``anchor + k * interval``, so loops sharing an anchor start their cycles together (a cycle that overruns
    skips to the next grid point); without one, ``interval`` after the start of the previous cycle."""
    if first_at is not None and first_at > time.monotonic():
        await asyncio.sleep(first_at - time.monotonic())
    while True:
        started = time.monotonic()
        await poll()
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # A cancellation some await inside the poll dropped (Python 3.11's wait_for, gh-86296): honour it.
            raise asyncio.CancelledError
        now = time.monotonic()
        wake = next_start(now, interval, anchor) if anchor is not None else started + interval
        if wake <= started:  # a cycle shorter than the clock's resolution: never poll twice in one slot
            wake += interval
        if wake > now:
            await asyncio.sleep(wake - now)


# --- Self-metrics -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceFamilies:
    success: GaugeMetricFamily
    duration: GaugeMetricFamily
    last_success: GaugeMetricFamily
    errors: CounterMetricFamily

    def add(self, labels: dict[str, str], source: SourceState[Any]) -> None:
        """One source's samples; ``labels`` by name, so a family can hold sources with more labels than others (a
        node's sources carry ``node`` besides ``target`` and ``source``)."""
        if source.polled:
            self.success.add_sample(self.success.name, labels, 1.0 if source.success else 0.0)
            self.duration.add_sample(self.duration.name, labels, source.duration_seconds)
        if source.last_success_timestamp is not None:
            self.last_success.add_sample(self.last_success.name, labels, source.last_success_timestamp)
        for reason, count in sorted(source.errors_total.items()):
            self.errors.add_sample(self.errors.name + "_total", {**labels, "reason": reason}, count)


class GaugeMaker(Protocol):
    def __call__(self, name: str, doc: str, labels: Sequence[str] = ...) -> GaugeMetricFamily: ...


def gauges(note: str, default_labels: Sequence[str]) -> GaugeMaker:
    """The one way a source's collector declares a gauge family: every HELP text ends with ``note`` (where its values
    come from and how long they are served), ``default_labels`` unless given."""

    def gauge(name: str, doc: str, labels: Sequence[str] = default_labels) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc + note, labels=list(labels))

    return gauge


# A source's labels (target, source and, for a farm node's, node) and its state: what each source package yields for
# the health families below.
Health = Iterable[tuple[dict[str, str], SourceState[Any]]]


def health_metrics(sources: Health) -> Iterator[Metric]:
    """How each source's polls went, over every source package, as one set of families (a family may appear only once
    in an exposition), and the exporter's build."""
    labels = ["target", "source"]
    health = SourceFamilies(
        GaugeMetricFamily(
            "bitbucket_mirror_exporter_poll_success",
            "1 when the last background poll of the source succeeded, 0 when it failed (values then are stale).",
            labels=labels,
        ),
        GaugeMetricFamily(
            "bitbucket_mirror_exporter_poll_duration_seconds",
            "How long the last background poll of the source took, retries included.",
            labels=labels,
        ),
        GaugeMetricFamily(
            "bitbucket_mirror_exporter_last_success_timestamp_seconds",
            "When the source was last polled successfully, as a Unix timestamp: the age of its values.",
            labels=labels,
        ),
        CounterMetricFamily(
            "bitbucket_mirror_exporter_poll_errors",
            "Failed background polls of the source, by reason.",
            labels=[*labels, "reason"],
        ),
    )
    for source_labels, source in sources:
        health.add(source_labels, source)
    build = GaugeMetricFamily(
        "bitbucket_mirror_exporter_build_info", "The exporter's version; always 1.", labels=["version"]
    )
    build.add_metric([__version__], 1.0)
    yield from (health.success, health.duration, health.last_success, health.errors, build)


def freshness(stale_after: float, own_interval: float | None = None) -> float:
    """How long after it was learned a value is served: the one rule (docs/metrics.md, "Freshness").

    ``stale_after`` is poll.stale_after_seconds (3 x poll.interval_seconds unless set), which already counts the REST
    grid's interval. A source polled on an interval of its own (JMX nodes, git mirrors, webhook statistics) is served
    for at least three of its own intervals, so one or two failed polls never blank its values."""
    return stale_after if own_interval is None else max(stale_after, 3 * own_interval)
