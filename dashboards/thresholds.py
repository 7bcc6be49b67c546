"""Panel thresholds taken from the alert rules' defaults, so a panel turns orange or red exactly where an alert
would fire."""

from __future__ import annotations

from alerts.rules import AlertConfig
from dashboards.panels import steps

ALERTS = AlertConfig()

SYNC_LAG = steps(("green", None), ("orange", ALERTS.lag_warning_seconds), ("red", ALERTS.lag_critical_seconds))
QUEUE_BACKLOG = steps(("green", None), ("orange", ALERTS.queue_backlog))
NOT_SEEN = steps(("green", None), ("orange", ALERTS.not_seen_seconds))
REPOSITORY_FAILED_SYNCS = steps(("green", None), ("orange", ALERTS.failed_syncs))
INCREMENTAL_SLOW = steps(("green", None), ("orange", ALERTS.incremental_sync_slow_seconds))
SNAPSHOT_SLOW = steps(("green", None), ("orange", ALERTS.snapshot_sync_slow_seconds))
SNAPSHOTS_PER_HOUR = steps(("green", None), ("orange", ALERTS.snapshot_syncs_per_hour))
PUSH_TO_SYNC = steps(("green", None), ("orange", ALERTS.push_to_sync_p90_seconds))
GIT_STALE = steps(("green", None), ("orange", ALERTS.git_stale_seconds))
