"""A webhook registered on the simulated primary: where it posts, and how badly (dropped or delayed deliveries)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WebhookTarget:
    """Where the simulated primary posts its events (a webhook Bitbucket would have), and how badly."""

    url: str
    secret: str | None = None
    # Deliveries left out: the next n, and a share of all after them (seeded).
    drop_next: int = 0
    drop_rate: float = 0.0
    delay_seconds: float = 0.0
    # What Bitbucket's statistics summary reports: delivery outcomes and when the last ones were (epoch ms).
    successes: int = 0
    failures: int = 0
    last_success_ms: int | None = None
    last_failure_ms: int | None = None
