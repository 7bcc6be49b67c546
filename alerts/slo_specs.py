"""The freshness SLOs (docs/slo.md) as specs for two SLO tools, for teams that generate their SLO rules with them:
sloth (its ``prometheus/v1`` spec) and pyrra (its ``ServiceLevelObjective``). Both count events: the freshness SLO
from the exporter's repository checks (``bitbucket_mirror_repositories_checked_total``, ``..._late_total``), the
push-sync SLO from ``bitbucket_mirror_push_to_sync_seconds``. The same objectives, thresholds, names and severities
as alerts/rules.py's own rules, with a 30-day window; the tools derive their own burn-rate windows."""

from __future__ import annotations

from typing import Any

import yaml

from alerts.panels import PANELS
from alerts.rules import AlertConfig, links, selected

SERVICE = "bitbucket-mirror"
WINDOW = "30d"
FRESHNESS_ALERT = "BitbucketMirrorFreshnessBudgetBurn"
PUSH_SYNC_ALERT = "BitbucketMirrorPushSyncBudgetBurn"


def _percent(objective: str) -> float:
    return round(float(objective) * 100, 6)


def _queries(config: AlertConfig) -> dict[str, dict[str, str]]:
    """Per SLO: its bad and total event series (selectors), and the push-sync SLO's bucket."""
    late = f'over="{config.slo_freshness_threshold_seconds}"'
    # The exporter writes a bucket's bound as the number it is (le="120").
    within = f'le="{config.slo_push_sync_threshold_seconds}"'
    return {
        "freshness": {
            "errors": selected(config, "bitbucket_mirror_repositories_checked_late_total", late),
            "total": selected(config, "bitbucket_mirror_repositories_checked_total"),
        },
        "push-sync": {
            "success": selected(config, "bitbucket_mirror_push_to_sync_seconds_bucket", within),
            "total": selected(config, "bitbucket_mirror_push_to_sync_seconds_count"),
        },
    }


def sloth(config: AlertConfig | None = None) -> dict[str, Any]:
    config = config or AlertConfig()
    queries = _queries(config)
    freshness, push = queries["freshness"], queries["push-sync"]

    def rate(selector: str) -> str:
        return f"sum by (mirror) (rate({selector}[{{{{.window}}}}]))"

    def alerting(name: str) -> dict[str, Any]:
        return {
            "name": name,
            "annotations": links(config, name, PANELS),
            "page_alert": {"labels": {"severity": "critical"}},
            "ticket_alert": {"labels": {"severity": "warning"}},
        }

    return {
        "version": "prometheus/v1",
        "service": SERVICE,
        "slos": [
            {
                "name": "freshness",
                "objective": _percent(config.slo_freshness_objective),
                "sli": {"events": {"error_query": rate(freshness["errors"]), "total_query": rate(freshness["total"])}},
                "alerting": alerting(FRESHNESS_ALERT),
            },
            {
                "name": "push-sync",
                "objective": _percent(config.slo_push_sync_objective),
                "sli": {
                    "events": {
                        "error_query": f"{rate(push['total'])} - {rate(push['success'])}",
                        "total_query": rate(push["total"]),
                    }
                },
                "alerting": alerting(PUSH_SYNC_ALERT),
            },
        ],
    }


def pyrra(config: AlertConfig | None = None) -> list[dict[str, Any]]:
    config = config or AlertConfig()
    queries = _queries(config)
    freshness, push = queries["freshness"], queries["push-sync"]

    def slo(name: str, objective: str, description: str, indicator: dict[str, Any], alert: str) -> dict[str, Any]:
        return {
            "apiVersion": "pyrra.dev/v1alpha1",
            "kind": "ServiceLevelObjective",
            "metadata": {
                "name": f"{SERVICE}-{name}",
                "labels": {"app.kubernetes.io/name": "bitbucket-mirror-exporter"},
            },
            "spec": {
                "target": f"{_percent(objective):g}",
                "window": WINDOW,
                "description": description,
                "indicator": indicator,
                "alerting": {"name": alert, "severities": {"fastBurn": "critical", "slowBurn": "warning"}},
            },
        }

    return [
        slo(
            "freshness",
            config.slo_freshness_objective,
            f"Repositories in each mirror's scope whose content is less than {config.slo_freshness_threshold_seconds}s "
            "behind the primary's, per repository check (docs/slo.md).",
            {
                "ratio": {
                    "errors": {"metric": freshness["errors"]},
                    "total": {"metric": freshness["total"]},
                    "grouping": ["mirror"],
                }
            },
            FRESHNESS_ALERT,
        ),
        slo(
            "push-sync",
            config.slo_push_sync_objective,
            f"Pushes that reach each mirror within {config.slo_push_sync_threshold_seconds}s (docs/slo.md).",
            {
                "latency": {
                    "success": {"metric": push["success"]},
                    "total": {"metric": push["total"]},
                    "grouping": ["mirror"],
                }
            },
            PUSH_SYNC_ALERT,
        ),
    ]


def render(format_: str, config: AlertConfig | None = None) -> str:
    """``sloth`` (one spec document) or ``pyrra`` (one ServiceLevelObjective per SLO, as YAML documents)."""
    header = f"# Generated by bitbucket-mirror-exporter rules --format {format_} (alerts/slo_specs.py; docs/slo.md).\n"
    if format_ == "sloth":
        return header + yaml.safe_dump(sloth(config), sort_keys=False, width=1000)
    if format_ == "pyrra":
        return header + yaml.safe_dump_all(pyrra(config), sort_keys=False, width=1000)
    raise ValueError(f"unknown format {format_!r} (prometheus, sloth or pyrra)")
