"""The rendering policy every source reads: how many per-repository series to serve and how long a value is served
after it was learned. Each source owns the type of its own state (``rest/state.py``, ``jmx/state.py``,
``git/state.py``); the composition root (exporter/app.py) holds them together as ``ExporterState``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Policy:
    """How much to render, from the configuration: read by the pollers (what to keep) and the collectors (what to
    show), and replaced with the state on a reload."""

    # per_repository_metrics: all, unhealthy (drifting, missing or failing) or none.
    per_repository: str = "unhealthy"
    max_repository_series: int = 100
    # poll.stale_after_seconds: how long a value is served after it was learned.
    stale_after: float = 90.0

    @property
    def keep_all(self) -> bool:
        """Whether drift analysis keeps every repository for per-repository series, not only the unhealthy ones."""
        return self.per_repository == "all"

    def shown(self, repositories: list[T]) -> list[T]:
        """The repositories that get per-repository series (they come worst first)."""
        return [] if self.per_repository == "none" else repositories[: self.max_repository_series]
