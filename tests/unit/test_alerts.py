"""The alert rules: generated file up to date, promtool check and unit tests, every alert covered both ways, runbooks,
overrides, and the example Alertmanager configuration."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from alerts.rules import RULES_FILE, AlertConfig, alert_names, render, rule_groups

REPO = Path(__file__).parent.parent.parent
UNIT_TESTS = REPO / "tests" / "alerts" / "bitbucket-mirror.test.yml"
RUNBOOKS = REPO / "docs" / "runbooks.md"
AM_EXAMPLE = REPO / "docs" / "alertmanager.example.yml"

REQUIRED = {
    "BitbucketMirrorExporterDown", "BitbucketMirrorExporterPollFailing", "BitbucketMirrorDown",
    "BitbucketMirrorNotSynchronized", "BitbucketMirrorRepositoriesOutOfSync", "BitbucketMirrorSyncLagHigh",
    "BitbucketMirrorMetadataDrift", "BitbucketMirrorRepositoriesMissing", "BitbucketMirrorRepositorySyncFailing",
    "BitbucketMirrorRefChangesQueueBacklog", "BitbucketMirrorFarmNodesMissing", "BitbucketMirrorNotSeenByPrimary",
    "BitbucketMirrorInitialSyncStalled", "BitbucketMirrorJmxDown", "BitbucketMirrorSnapshotSyncsFrequent",
    "BitbucketMirrorSyncSlow",
}  # fmt: skip


def all_rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups()["groups"] for rule in group["rules"] if "alert" in rule]


def test_the_committed_rules_file_is_up_to_date() -> None:
    assert (REPO / RULES_FILE).read_text() == render(), "run: python3 -m alerts"


def test_the_issue_names_every_alert_we_have_and_more_are_welcome() -> None:
    assert set(alert_names()) >= REQUIRED


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    fired: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    assert set(alert_names()) - fired == set(), "never tested firing"
    assert set(alert_names()) - silent == set(), "never tested silent"


@pytest.mark.parametrize("rule", all_rules(), ids=lambda r: f"{r['alert']}-{r['labels']['severity']}")
def test_every_alert_has_severity_annotations_and_a_runbook(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in ("critical", "warning", "info")
    annotations = rule["annotations"]
    assert "{{" not in annotations["summary"], "the summary is static"
    assert "{{" in annotations["description"], "the description is templated"
    # Each names what it is about: a mirror; a git mirror; the exporter itself (its polls, its webhook endpoint).
    about_the_exporter = ("BitbucketMirrorExporterDown", "BitbucketMirrorExporterPollFailing",
                          "BitbucketMirrorWebhooksSilent", "BitbucketMirrorWebhookDeliveriesFailing")  # fmt: skip
    if rule["alert"].startswith("BitbucketMirrorGitMirror"):
        assert "$labels.git_mirror" in annotations["description"] or "$labels.target" in annotations["description"]
    elif rule["alert"] not in about_the_exporter:
        assert "$labels.mirror" in annotations["description"]
    if "project" in rule["expr"] or "repository_failed_syncs" in rule["expr"]:
        assert "$labels.repository" in annotations["description"]
    anchor = annotations["runbook_url"].rpartition("#")[2]
    headings = {h.strip().lower() for h in re.findall(r"^## (.+)$", RUNBOOKS.read_text(), flags=re.M)}
    assert anchor in headings, f"docs/runbooks.md has no section '## {rule['alert']}'"


def test_metadata_drift_never_pages() -> None:
    metadata_rules = [rule for rule in all_rules() if "metadata" in rule["expr"]]
    assert metadata_rules, "no rule reads metadata drift: the check below would pass on nothing"
    for rule in metadata_rules:
        assert rule["labels"]["severity"] != "critical"


def test_every_alert_links_the_panel_that_shows_it() -> None:
    dashboards = {
        d["uid"]: d for d in (json.loads(p.read_text()) for p in (REPO / "dashboards/generated").glob("*.json"))
    }

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    rules = all_rules()
    assert {r["alert"] for r in rules} == set(alert_names())
    for rule in rules:
        url = rule["annotations"]["dashboard_url"]
        found = re.fullmatch(r"http://localhost:3000/d/([\w-]+)\?viewPanel=(\d+)", url)
        assert found, url
        uid, panel_id = found.group(1), int(found.group(2))
        [panel] = [p for p in panels(dashboards[uid]["panels"]) if p["id"] == panel_id]
        # The panel names the alert: the one that carries its runbook link.
        assert re.search(rf"\b{rule['alert']}\b", panel["description"]), (rule["alert"], panel["title"])


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("slo_freshness_threshold_seconds=301", "not one the exporter serves (60, 120, 300, 600, 900, 1800, 3600)"),
        ("slo_push_sync_threshold_seconds=100", "not one the exporter serves"),
        ("slo_freshness_objective=1.5", "not an objective between 0 and 1"),
        ("slo_push_sync_objective=99%", "not an objective between 0 and 1"),
    ],
)
def test_an_slo_setting_the_exporter_cannot_serve_is_refused(setting: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        AlertConfig.from_settings([setting])


def test_the_slo_settings_reach_the_burn_rate_rules() -> None:
    config = AlertConfig.from_settings(["slo_freshness_objective=0.995", "slo_freshness_threshold_seconds=600"])
    rules = [r for g in rule_groups(config)["groups"] for r in g["rules"]]
    [errors] = [r for r in rules if r.get("record") == "mirror:bitbucket_mirror_freshness_errors:ratio"]
    assert 'over="600"' in errors["expr"]
    burns = [r for r in rules if r.get("alert") == "BitbucketMirrorFreshnessBudgetBurn"]
    assert sorted(r["labels"]["severity"] for r in burns) == ["critical", "warning"]
    assert all("(1 - 0.995)" in r["expr"] for r in burns)
