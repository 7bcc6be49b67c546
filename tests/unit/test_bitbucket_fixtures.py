"""The answers the specs leave without a schema, as transcribed in tests/fixtures/bitbucket/ (sources in its README):
the exporter's client code reads each one; and, where the official specs are beside the repository
(../shared/reference), each fixture agrees with whatever the specs do say."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from exporter.webhooks.setup import (
    EVENTS,
    EventDeliveries,
    capability_url,
    invocation_start,
    parse_summary,
    webhook_events,
)

REPO = Path(__file__).resolve().parent.parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "bitbucket"
REFERENCE = REPO.parent / "shared" / "reference"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def test_the_statistics_summary_is_read_per_event_with_its_window() -> None:
    events = parse_summary(fixture("webhook-statistics-summary.json"))
    assert events["repo:refs_changed"] == EventDeliveries(
        "repo:refs_changed", {"success": 12, "failure": 0, "error": 1}, 1_700_000_000.0, 86_400.0
    )
    assert events["mirror:repo_synchronized"].counts == {"success": 30, "failure": 2, "error": 0}


def test_a_summary_that_is_not_a_map_of_events_is_refused_and_odd_members_are_left_out() -> None:
    with pytest.raises(ValueError):
        parse_summary([1, 2])
    odd = parse_summary({"repo:refs_changed": {"successes": "many", "failures": True, "errors": 2}, "x": 3})
    assert odd == {"repo:refs_changed": EventDeliveries("repo:refs_changed", {"error": 2})}


def test_the_latest_invocation_gives_when_it_started() -> None:
    assert invocation_start(fixture("webhook-latest-invocation.json")) == 1_700_000_100.0
    assert invocation_start(None) is None  # 204: none


def test_capabilities_lead_to_one_global_list_of_webhook_events() -> None:
    url = capability_url(fixture("capabilities.json"), "webhooks")
    assert url is not None and url.endswith("/rest/webhooks/latest/capabilities")
    events = webhook_events(fixture("webhook-capabilities.json"))
    assert events is not None and set(EVENTS) <= set(events)
    assert webhook_events({"events": EVENTS}) is None  # an invented shape is not read as a list


def spec(version: str) -> dict[str, Any]:
    import yaml

    name = {"9.2": "bitbucket-dc-9.2-openapi.json", "9.6": "bitbucket-dc-9.6-openapi.yaml"}[version]
    path = REFERENCE / name
    if not path.is_file():
        pytest.skip(f"the official specs are not beside the repository ({REFERENCE})")
    text = path.read_text()
    return dict(json.loads(text) if name.endswith(".json") else yaml.load(text, Loader=yaml.CSafeLoader))


@pytest.mark.parametrize("version", ["9.2", "9.6"])
def test_the_fixtures_agree_with_what_the_specs_say(version: str) -> None:
    document = spec(version)
    paths, schemas = document["paths"], document["components"]["schemas"]
    hook = "/api/latest/projects/{projectKey}/repos/{repositorySlug}/webhooks/{webhookId}"
    # latest: RestDetailedInvocation names every member the fixture has, and 204 is "no invocations".
    latest = paths[hook + "/latest"]["get"]["responses"]
    (answer,) = latest["200"]["content"].values()  # application/json, or */* in 9.6
    assert "204" in latest and answer["schema"]["$ref"].endswith("/RestDetailedInvocation")
    assert set(fixture("webhook-latest-invocation.json")) <= set(schemas["RestDetailedInvocation"]["properties"])
    # summary: the spec's schema is empty (so the fixture is the oracle).
    assert schemas["RestInvocationHistory"].get("properties", {}) == {}
    # 204 before the first delivery: the spec says so for the project webhook (the repository's lists 200 only).
    project_summary = "/api/latest/projects/{projectKey}/webhooks/{webhookId}/statistics/summary"
    assert "204" in paths[project_summary]["get"]["responses"]
    # capabilities: in no spec (the fixture is the oracle).
    assert "/capabilities" not in paths and "/webhooks/latest/capabilities" not in paths
