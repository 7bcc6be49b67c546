"""The generated Grafana dashboards: up to date with their grafanalib source, in Grafana's current JSON model, laid
out without overlap, and following the conventions (variables in every query, units, alert thresholds, links)."""

from __future__ import annotations

import json
import re
from itertools import combinations
from typing import Any

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

from alerts.rules import AlertConfig, alert_names
from dashboards.build import GENERATED, rendered
from dashboards.common import SCHEMA_VERSION, TAG
from dashboards.variables import ALL
from tests.dashboard_json import (
    data_panels,
    documented_labels,
    generated,
    panels,
    queries,
    selectors,
)

UIDS = {
    "mirror-farm-overview.json": "bbmirror-overview",
    "repository-drift.json": "bbmirror-repository-drift",
    "sync-performance.json": "bbmirror-sync-performance",
    "exporter-health.json": "bbmirror-exporter-health",
    "git-mirrors.json": "bbmirror-git-mirrors",
    "freshness-slo.json": "bbmirror-slo",
}
DASHBOARDS = generated()


def test_the_committed_json_is_what_the_grafanalib_source_renders() -> None:
    for name, text in rendered().items():
        assert (GENERATED / name).read_text() == text, f"{name} is stale: run `python3 -m dashboards`"
    assert sorted(p.name for p in GENERATED.glob("*.json")) == sorted(rendered()), "a stray file in generated/"


def test_each_dashboard_has_its_stable_uid_tags_and_links_to_the_others() -> None:
    assert {name: d["uid"] for name, d in DASHBOARDS.items()} == UIDS
    for name, dashboard in DASHBOARDS.items():
        assert TAG in dashboard["tags"], name
        assert dashboard["schemaVersion"] == SCHEMA_VERSION
        [link] = dashboard["links"]
        # A tag link lists every dashboard carrying the tag, so all four link to each other.
        assert (link["type"], link["tags"], link["includeVars"], link["keepTime"]) == ("dashboards", [TAG], True, True)


def _lost(ours: Any, loaded: Any, path: str = "") -> list[str]:
    """Paths of what ``ours`` has and ``loaded`` dropped or changed."""
    if isinstance(ours, dict):
        if not isinstance(loaded, dict):
            return [path]
        keys = {k: f"{path}.{k}" if path else k for k in ours}
        return [p for k, v in ours.items() for p in (_lost(v, loaded[k], keys[k]) if k in loaded else [keys[k]])]
    if isinstance(ours, list):
        if not isinstance(loaded, list) or len(loaded) != len(ours):
            return [path]
        return [p for i, (a, b) in enumerate(zip(ours, loaded, strict=True)) for p in _lost(a, b, f"{path}[{i}]")]
    return [] if ours == loaded else [f"{path}: {ours!r} became {loaded!r}"]


@pytest.mark.parametrize("name", sorted(UIDS))
def test_every_key_is_in_grafanas_dashboard_schema(name: str) -> None:
    """No Grafana server here: the JSON is loaded into the Grafana 11.6 schema models of grafana-foundation-sdk
    (dashboard, panel options and field config per panel type, Prometheus query) and written back. A key the schema
    does not know is dropped by that round trip, so it would show here."""
    register_default_plugins()
    ours = DASHBOARDS[name]
    loaded = json.loads(json.dumps(Dashboard.from_json(ours), cls=JSONEncoder))
    assert _lost(ours, loaded) == []


def test_the_schema_check_notices_an_unknown_key() -> None:
    register_default_plugins()
    dashboard = json.loads(json.dumps(DASHBOARDS["exporter-health.json"]))
    dashboard["panels"][0]["options"]["legacyOption"] = True
    dashboard["panels"][0]["targets"][0]["step"] = 10
    loaded = json.loads(json.dumps(Dashboard.from_json(dashboard), cls=JSONEncoder))
    assert _lost(dashboard, loaded) == ["panels[0].options.legacyOption", "panels[0].targets[0].step"]


@pytest.mark.parametrize("name", sorted(UIDS))
def test_panel_ids_are_unique_and_panels_do_not_overlap(name: str) -> None:
    all_panels = list(panels(DASHBOARDS[name]))
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids))
    boxes = [(p["title"], p["gridPos"]) for p in all_panels]
    for _, box in boxes:
        assert box["x"] >= 0 and box["y"] >= 0 and box["w"] > 0 and box["h"] > 0
        assert box["x"] + box["w"] <= 24
    for (a_title, a), (b_title, b) in combinations(boxes, 2):
        apart = a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"] or a["y"] + a["h"] <= b["y"]
        assert apart or b["y"] + b["h"] <= a["y"], f"{a_title!r} overlaps {b_title!r}"


def test_every_query_is_scoped_by_the_job_and_mirror_variables() -> None:
    labels = documented_labels()
    for query in queries():
        assert query.target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, str(query)
        found = selectors(query.expr)
        assert found, str(query)
        # Every metric name is followed by a selector, so none escapes the variables.
        # Recorded series (level:metric:operations) count as one name.
        name = r"(?<![\w:])(?:\w+:)?(?:bitbucket_mirror_\w+|process_\w+|up|scrape_\w+)(?::\w+)?(?![\w:{])"
        bare = re.findall(name, query.expr)
        assert not bare, f"{query}: {bare} without a selector"
        for metric, matchers in found:
            assert 'job=~"$job"' in matchers, f"{query}: {metric}"
            if "mirror" in labels.get(metric, ()):
                assert 'mirror=~"$mirror"' in matchers, f"{query}: {metric}"
            if "target" in labels.get(metric, ()):
                # A git mirror's self-metrics are scoped by the git mirror variable instead.
                scoped = ('target=~"primary|$mirror"', 'target=~"$git_mirror"')
                assert any(s in matchers for s in scoped), f"{query}: {metric}"
    assert "mirror" in labels["bitbucket_mirror_up"] and "target" in labels["bitbucket_mirror_exporter_poll_success"]


def test_rates_use_grafanas_rate_interval() -> None:
    for query in queries():
        for window in re.findall(r"\b(?:rate|irate|increase)\([^\[]*\[([^\]]*)\]", query.expr):
            assert window == "$__rate_interval", str(query)
    assert any("rate(" in q.expr for q in queries())


def test_every_panel_and_table_column_has_a_unit() -> None:
    for name, dashboard in DASHBOARDS.items():
        for panel in data_panels(dashboard):
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{name} / {panel['title']}"
            for override in panel["fieldConfig"]["overrides"]:
                ids = [p["id"] for p in override["properties"]]
                assert "unit" in ids, f"{name} / {panel['title']} / {override['matcher']['options']}"


def test_variables() -> None:
    for name, dashboard in DASHBOARDS.items():
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        assert (
            variables["job"]["query"] == 'label_values(bitbucket_mirror_exporter_build_info{cluster=~"$cluster"}, job)'
        )
        # Several exporters (one per farm, an HA pair) together; a cluster label where Prometheus has one.
        # The git mirrors' dashboard is about no Bitbucket mirror: a git_mirror variable instead.
        scope = "mirror" if name != "git-mirrors.json" else "git_mirror"
        for multi in ("cluster", "job", scope):
            assert (variables[multi]["multi"], variables[multi]["includeAll"]) == (True, True), (name, multi)
        assert variables[scope]["allValue"] == ALL and variables["job"]["allValue"] == ALL
        assert variables["cluster"]["allValue"] == ".*", "All must match series without a cluster label"
        assert 'job=~"$job"' in variables[scope]["query"]
        assert variables["runbooks"]["type"] == "textbox"
        assert variables["runbooks"]["query"] == AlertConfig().runbook_url
        exprs = [q.expr for q in queries() if q.dashboard == name]
        for variable in variables:
            if variable not in ("datasource", "runbooks"):
                assert any(f"${variable}" in e for e in exprs), f"{name}: ${variable} unused"
    node = {v["name"]: v for v in DASHBOARDS["sync-performance.json"]["templating"]["list"]}["node"]
    assert node["multi"] and 'mirror=~"$mirror"' in node["query"]


def _steps(name: str, title: str, column: str | None = None) -> list[float | None]:
    [panel] = [p for p in data_panels(DASHBOARDS[name]) if p["title"] == title]
    if column is None:
        thresholds = panel["fieldConfig"]["defaults"]["thresholds"]
    else:
        [override] = [o for o in panel["fieldConfig"]["overrides"] if o["matcher"]["options"] == column]
        thresholds = next(p["value"] for p in override["properties"] if p["id"] == "thresholds")
    return [step["value"] for step in thresholds["steps"]]


def test_thresholds_are_the_alert_rules_defaults() -> None:
    c = AlertConfig()
    lag = [None, c.lag_warning_seconds, c.lag_critical_seconds]
    assert _steps("mirror-farm-overview.json", "Max sync lag") == lag
    assert _steps("mirror-farm-overview.json", "Sync lag") == lag
    assert _steps("mirror-farm-overview.json", "Mirrors", "Max lag") == lag
    assert _steps("mirror-farm-overview.json", "Mirrors", "Queue") == [None, c.queue_backlog]
    assert _steps("mirror-farm-overview.json", "Ref changes queue") == [None, c.queue_backlog]
    assert _steps("mirror-farm-overview.json", "Mirrors", "Last seen by primary") == [None, c.not_seen_seconds]
    assert _steps("mirror-farm-overview.json", "Last seen by the primary") == [None, c.not_seen_seconds]
    assert _steps("repository-drift.json", "Lag of the longest-lagging repositories") == lag
    assert _steps("repository-drift.json", "Repositories out of sync or failing", "Lag") == lag
    assert _steps("repository-drift.json", "Repositories out of sync or failing", "Failed syncs") == [
        None,
        c.failed_syncs,
    ]
    assert _steps("sync-performance.json", "Incremental sync duration") == [None, c.incremental_sync_slow_seconds]
    assert _steps("sync-performance.json", "Snapshot sync duration") == [None, c.snapshot_sync_slow_seconds]
    assert _steps("sync-performance.json", "Snapshot syncs per hour") == [None, c.snapshot_syncs_per_hour]


def test_alerts_named_in_descriptions_exist_and_table_links_point_at_a_dashboard() -> None:
    names = alert_names()
    uids = set(UIDS.values())
    for dashboard in DASHBOARDS.values():
        for panel in data_panels(dashboard):
            for alert in re.findall(r"\bBitbucketMirror\w+", panel.get("description", "")):
                assert alert in names, f"{panel['title']}: {alert}"
            for override in panel["fieldConfig"]["overrides"]:
                for prop in override["properties"]:
                    for link in prop["value"] if prop["id"] == "links" else []:
                        assert re.match(r"/d/([\w-]+)\?", link["url"])[1] in uids  # type: ignore[index]


def test_every_alert_backed_panel_links_to_its_runbook() -> None:
    linked: set[str] = set()
    for name, dashboard in DASHBOARDS.items():
        for panel in data_panels(dashboard):
            named = set(re.findall(r"\bBitbucketMirror\w+", panel.get("description", "")))
            links = {link["url"] for link in panel.get("links", [])}
            for alert in named:
                assert "${runbooks}#" + alert.lower() in links, f"{name} / {panel['title']}: no runbook for {alert}"
            linked |= named
    # The alerts a dashboard can show are all linked somewhere.
    shown = {"BitbucketMirrorDown", "BitbucketMirrorSyncLagHigh", "BitbucketMirrorRepositoriesOutOfSync",
             "BitbucketMirrorRepositorySyncFailing", "BitbucketMirrorDriftUnknown",
             "BitbucketMirrorExporterPollFailing"}  # fmt: skip
    assert shown <= linked


def test_the_overview_shows_mirrors_down_in_red_failing_sources_and_firing_alerts() -> None:
    overview = {p["title"]: p for p in panels(DASHBOARDS["mirror-farm-overview.json"])}
    up = overview["Mirrors up"]
    assert [s["color"] for s in up["fieldConfig"]["defaults"]["thresholds"]["steps"]] == ["red", "green"]
    assert "by (mirror)" in up["targets"][0]["expr"] and up["targets"][0]["legendFormat"] == "{{mirror}}"
    assert {"Sources failing", "Mirrors with unknown drift", "Failing or stale sources"} <= set(overview)
    alerts = overview["Firing alerts"]
    assert alerts["type"] == "alertlist"
    assert alerts["options"]["alertInstanceLabelFilter"] == '{alertname=~"BitbucketMirror.*"}'


# Series with a node label: an aggregation that drops it runs over every node of every farm at each refresh.
PER_NODE = re.compile(r"^(bitbucket_mirror_node_\w+|bitbucket_mirror_jmx_\w+|bitbucket_mirror_exporter_jmx_\w+)\{")
AGGREGATION = re.compile(r"\b(sum|count|min|max|avg|stddev|quantile|group)\s*(?:(by|without)\s*\(([^)]*)\))?\s*\(")


def test_no_dashboard_query_aggregates_over_nodes_itself() -> None:
    # The recording rules (alerts/rules.py, "recording") do it once per evaluation; the dashboards read them.
    offending = []
    for query in queries():
        for found in AGGREGATION.finditer(query.expr):
            argument = query.expr[found.end() :].lstrip()
            argument = argument.removeprefix("rate(").removeprefix("increase(").lstrip()
            keeps_node = (found.group(2) == "by" and "node" in found.group(3)) or (
                found.group(2) == "without" and "node" not in found.group(3)
            )
            if PER_NODE.match(argument) and not keeps_node:
                offending.append(str(query))
    assert offending == []
