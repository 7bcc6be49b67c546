"""``rules --format sloth|pyrra``: each spec validated against the tool's published schema (tests/fixtures/slo/, with
their sources), and its indicator proven by promtool to give the same error ratio as the project's own SLO rules
(neither tool installs from the package registries here, so their generated rules cannot be compared directly)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from alerts.rules import RULES_FILE, AlertConfig, freshness_errors, push_sync_errors
from alerts.slo_specs import pyrra, render, sloth
from tests.tools import binary

REPO = Path(__file__).parent.parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "slo"


def strict(schema: Any) -> Any:
    """A CRD schema as the API server's pruning applies it, made strict: an unknown field is an error here, where
    Kubernetes would drop it silently (and the SLO with it)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if "properties" in out and out.get("type") == "object":
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def test_the_sloth_spec_is_valid_against_sloths_schema() -> None:
    fixture = json.loads((FIXTURES / "sloth-prometheus-v1.json").read_text())
    spec = yaml.safe_load(render("sloth"))
    jsonschema.Draft7Validator(fixture["schema"]).validate(spec)
    assert [slo["name"] for slo in spec["slos"]] == ["freshness", "push-sync"]
    assert [slo["objective"] for slo in spec["slos"]] == [99.0, 99.0]
    # The schema can fail: a spec without its window placeholder is refused.
    broken = json.loads(json.dumps(spec).replace("{{.window}}", "5m"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(fixture["schema"]).validate(broken)


def test_the_pyrra_objectives_are_valid_against_pyrras_crd() -> None:
    fixture = json.loads((FIXTURES / "pyrra-servicelevelobjective.json").read_text())
    validator = jsonschema.Draft7Validator(strict(fixture["schema"]))
    documents = list(yaml.safe_load_all(render("pyrra")))
    assert len(documents) == 2
    for document in documents:
        assert document["apiVersion"] == f"{fixture['group']}/{fixture['version']}"
        assert document["kind"] == fixture["kind"]
        validator.validate(document)
    freshness, push = (d["spec"] for d in documents)
    assert (freshness["target"], freshness["window"]) == ("99", "30d")
    assert set(freshness["indicator"]) == {"ratio"} and set(push["indicator"]) == {"latency"}
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**documents[0], "spec": {**freshness, "indicatr": {}}})


def test_the_settings_reach_both_specs() -> None:
    config = AlertConfig.from_settings(["slo_freshness_objective=0.995", "slo_push_sync_threshold_seconds=300"])
    freshness = sloth(config)["slos"][0]
    assert freshness["objective"] == 99.5
    push = pyrra(config)[1]["spec"]["indicator"]["latency"]
    assert 'le="300"' in push["success"]["metric"]


SERIES = 'job="bitbucket-mirror-exporter",instance="e:9879",mirror="sydney"'
BUCKET = 'sync="incremental",le="120"'


def test_the_specs_indicators_give_the_same_error_ratio_as_our_rules(tmp_path: Path) -> None:
    # The same minutes seen both ways: 100 repositories in scope, 20 behind past 5 minutes, checked once a minute
    # (the gauges our rules read, the counters the specs read); 10 pushes a minute, 5 within 120 s.
    spec = sloth()
    window = "10m"
    sloth_freshness, sloth_push = (
        f"({slo['sli']['events']['error_query']}) / ({slo['sli']['events']['total_query']})".replace(
            "{{.window}}", window
        )
        for slo in spec["slos"]
    )
    tests = {
        "rule_files": [str(REPO / RULES_FILE)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": f"bitbucket_mirror_repositories_in_scope{{{SERIES}}}", "values": "100x30"},
                    {"series": f'bitbucket_mirror_repositories_lagging{{{SERIES},over="300"}}', "values": "20x30"},
                    {"series": f"bitbucket_mirror_repositories_checked_total{{{SERIES}}}", "values": "0+100x30"},
                    {
                        "series": f'bitbucket_mirror_repositories_checked_late_total{{{SERIES},over="300"}}',
                        "values": "0+20x30",
                    },
                    {
                        "series": f"bitbucket_mirror_push_to_sync_seconds_bucket{{{SERIES},{BUCKET}}}",
                        "values": "0+5x30",
                    },
                    {
                        "series": f'bitbucket_mirror_push_to_sync_seconds_count{{{SERIES},sync="incremental"}}',
                        "values": "0+10x30",
                    },
                ],
                "promql_expr_test": [
                    {"expr": f"sum({expr})", "eval_time": "20m", "exp_samples": [{"labels": "{}", "value": value}]}
                    for expr, value in (
                        (freshness_errors("30m").replace("30m", "5m"), 0.2),
                        (sloth_freshness, 0.2),
                        (push_sync_errors("5m"), 0.5),
                        (sloth_push, 0.5),
                    )
                ],
            }
        ],
    }
    path = tmp_path / "equivalence.yml"
    path.write_text(yaml.safe_dump(tests))
    result = subprocess.run(
        [binary("promtool", "prometheus"), "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
