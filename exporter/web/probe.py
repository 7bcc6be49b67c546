"""What the web side needs of ``probe`` (the REST source's section, exporter/rest/config.py) to serve
``/probe/node``, and the rate limit that bounds what probes cost."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProbePolicy:
    enabled: bool = False
    max_lag_seconds: float = 300.0
    unauthenticated: bool = False
    max_requests_per_second: float = 50.0


@dataclass
class RateLimit:
    """A token bucket: ``rate`` requests a second on average, bursts of up to a second's worth."""

    clock: Callable[[], float] = time.monotonic
    _tokens: float = 0.0
    _at: float | None = None
    _rate: float = 0.0

    def allow(self, rate: float) -> bool:
        now = self.clock()
        if self._at is None or rate != self._rate:
            self._tokens, self._rate = rate, rate  # a reload that changes the rate starts a full bucket
        else:
            self._tokens = min(rate, self._tokens + (now - self._at) * rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
