"""A webhook registered on the simulated primary: where it posts, how badly (dropped or delayed deliveries), what
Bitbucket records of its deliveries, and Bitbucket's circuit breaker.

Bitbucket (fact sheet, section 8, and docs/assumptions.md): an invocation's outcome is SUCCESS (a 2xx answer),
FAILURE (any other answer) or ERROR (no answer: a refused connection, a timeout). After
``BREAKER_FAILURES`` failed deliveries in a row the webhook is skipped, first for ``first_skip_seconds``, the skip
doubling after every failure that follows one, up to ``MAX_SKIP_SECONDS``; what is skipped is dropped, never retried.
A success (a delivery, or a successful "Test connection") closes the breaker.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

SUCCESS, FAILURE, ERROR = "SUCCESS", "FAILURE", "ERROR"
BREAKER_FAILURES = 5
FIRST_SKIP_SECONDS = 10.0
MAX_SKIP_SECONDS = 10 * 3600.0
# Invocations remembered per webhook for its statistics and latest invocations (bounded, as Bitbucket's are).
KEPT_INVOCATIONS = 1000
# Bitbucket's statistics summary covers a window (its length is not published): the simulator's is a day.
WINDOW_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class Invocation:
    """One delivery attempt, as RestDetailedInvocation describes it (epoch milliseconds on the primary's clock)."""

    id: int
    event: str
    outcome: str
    start_ms: int
    finish_ms: int
    description: str


@dataclass
class WebhookTarget:
    """Where the simulated primary posts its events (a webhook Bitbucket would have), and how badly."""

    url: str
    secret: str | None = None
    # Deliveries left out: the next n, and a share of all after them (seeded).
    drop_next: int = 0
    drop_rate: float = 0.0
    delay_seconds: float = 0.0
    invocations: deque[Invocation] = field(default_factory=lambda: deque(maxlen=KEPT_INVOCATIONS))
    first_invocation_ms: int | None = None
    # The circuit breaker: failed deliveries in a row, how long the current skip lasts, and until when.
    failures_in_a_row: int = 0
    skip_seconds: float = 0.0
    skip_until: float = 0.0
    first_skip_seconds: float = FIRST_SKIP_SECONDS
    skipped: int = 0  # events dropped while the breaker was open

    def skipping(self, now: float) -> bool:
        """Whether the breaker is open at ``now`` (the event is then dropped and counted)."""
        if now < self.skip_until:
            self.skipped += 1
            return True
        return False

    def record(self, event: str, outcome: str, start: float, finish: float, description: str) -> None:
        start_ms, finish_ms = int(start * 1000), int(finish * 1000)
        # Recorded as each finishes: one that started earlier may finish later.
        self.first_invocation_ms = min(start_ms, self.first_invocation_ms or start_ms)
        self.invocations.append(Invocation(len(self.invocations) + 1, event, outcome, start_ms, finish_ms, description))
        if outcome == SUCCESS:
            self.close()
            return
        self.failures_in_a_row += 1
        if self.skip_seconds > 0:
            # A failure right after a skip: the breaker opens again, for twice as long.
            self.skip_seconds = min(MAX_SKIP_SECONDS, self.skip_seconds * 2)
        elif self.failures_in_a_row >= BREAKER_FAILURES:
            self.skip_seconds = self.first_skip_seconds
        else:
            return
        self.skip_until = finish + self.skip_seconds

    def close(self) -> None:
        self.failures_in_a_row, self.skip_seconds, self.skip_until = 0, 0.0, 0.0

    def summary(self, now_ms: int) -> dict[str, dict[str, object]]:
        """``statistics/summary``: a map keyed by event id, each with the outcomes counted in the current window
        (Bitbucket.Net's WebHookStatisticsCounts as recorded from a live server; fact sheet, section 8)."""
        start = max(self.first_invocation_ms or now_ms, now_ms - WINDOW_MS)
        counts: dict[str, dict[str, object]] = {}
        for invocation in self.invocations:
            if invocation.start_ms < start:
                continue
            entry = counts.setdefault(
                invocation.event,
                {"successes": 0, "failures": 0, "errors": 0, "window": {"start": start, "duration": now_ms - start}},
            )
            key = {SUCCESS: "successes", FAILURE: "failures", ERROR: "errors"}[invocation.outcome]
            entry[key] = int(str(entry[key])) + 1
        return counts

    def latest(self, event: str | None, outcome: str | None) -> Invocation | None:
        """The newest invocation of ``event`` with ``outcome`` (either None: any)."""
        for invocation in reversed(self.invocations):
            if (event is None or invocation.event == event) and (outcome is None or invocation.outcome == outcome):
                return invocation
        return None
