"""jmx_exporter's text as Atlassian's chart serves it, and the Mesh sidecar's tickets, read into the same reading as a
JMX query gives (pure: no sockets)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.jmx.config import JmxMatch, TimerAttributes
from exporter.jmx.exporter_text import parse_exporter_text
from exporter.jmx.query import JmxRow
from exporter.jmx.reading import read_node
from exporter.simulator.farm import FarmNode
from exporter.simulator.jmx_text import TICKET_RESOURCES, bitbucket_text, mesh_text
from exporter.sources import FetchError

ATTRS, MATCH = TimerAttributes(), JmxMatch()


def test_timers_from_jmx_exporter_text_are_read_like_jmx_ones_and_the_untagged_bean_wins() -> None:
    node = FarmNode("n1", syncs={"incremental": 12, "snapshot": 2, "farm_vet": 1})
    reading = read_node(parse_exporter_text(bitbucket_text(node), ATTRS), MATCH, ATTRS)
    incremental = reading.timers["incremental"]
    assert incremental.count == 12  # the whole timer, not its tag_upstream slice (6)
    assert "tag_upstream" not in incremental.object_name
    assert incremental.mean == pytest.approx(0.12)  # milliseconds, Bitbucket's unit, in seconds
    assert incremental.quantiles["0.5"] == pytest.approx(0.1)
    assert incremental.rate_per_second == 0.5
    assert reading.timers["snapshot"].count == 2 and reading.timers["farm_vet"].count == 1
    assert reading.warnings == ()  # the tag_upstream slice of the timer read is no ambiguity


def test_the_mesh_sidecars_four_ticket_kinds_stay_apart() -> None:
    reading = read_node(parse_exporter_text(mesh_text(FarmNode("n1")), ATTRS), MATCH, ATTRS)
    figures = {(t.resource, t.attribute): t.value for t in reading.tickets}
    assert set(figures) == {(r, a) for r in TICKET_RESOURCES for a in ("available", "used")}
    assert figures[("scm-hosting", "available")] == 50.0 and figures[("git-lfs", "used")] == 3.0
    assert reading.warnings == ()


def test_the_sidecars_tickets_over_jmx_get_the_same_labels() -> None:
    rows = [
        JmxRow(f"metrics:section=tickets,throttledResource={resource},name={figure}", "Value", value)
        for resource, value in (("scm-hosting", 4), ("scm-command", 1))
        for figure in ("available", "used")
    ]
    reading = read_node(rows, MATCH, ATTRS)
    assert sorted((t.resource, t.attribute) for t in reading.tickets) == [
        ("scm-command", "available"),
        ("scm-command", "used"),
        ("scm-hosting", "available"),
        ("scm-hosting", "used"),
    ]


def test_text_that_is_not_prometheus_format_fails_as_an_invalid_response() -> None:
    with pytest.raises(FetchError) as raised:
        parse_exporter_text('metric{label="unterminated} 1\n', ATTRS)
    assert raised.value.reason == "invalid_response"


def test_a_tagged_timer_loses_to_the_untagged_one_even_when_its_name_sorts_first() -> None:
    def timer(object_name: str, count: int) -> list[JmxRow]:
        return [JmxRow(object_name, "Count", count), JmxRow(object_name, "Mean", 5.0)]

    tagged = "com.atlassian.bitbucket:type=metrics,category00=mirroring,name=incremental,tag.upstream=a"
    untagged = "com.atlassian.bitbucket:type=metrics,category00=mirroring,name=incremental_sync"
    assert tagged < untagged
    reading = read_node([*timer(untagged, 10), *timer(tagged, 4)], MATCH, ATTRS)
    assert reading.timers["incremental"].object_name == untagged
    assert reading.warnings == (f"{tagged} also matches incremental; using {untagged}",)


def test_the_tagged_slices_of_the_chosen_timer_are_no_ambiguity() -> None:
    # Bitbucket exports a timer whole and per tag (tag.upstream, ...): the slices match the same expression, and
    # the whole one is read; saying so on every start would be a warning about nothing.
    whole = "com.atlassian.bitbucket:type=metrics,category00=mirroring,name=incremental"
    slices = [f"{whole},tag.upstream=primary", f"{whole},tag.upstream=primary,tag.outcome=ok"]
    rows = [JmxRow(name, attribute, 1.0) for name in (*slices, whole) for attribute in ("Count", "Mean")]
    reading = read_node(rows, MATCH, ATTRS)
    assert reading.timers["incremental"].object_name == whole
    assert reading.warnings == ()
    # Through jmx_exporter the tags are tag_* labels: the same slices.
    underscored = [JmxRow(f"{whole},tag_upstream=primary", a, 1.0) for a in ("Count", "Mean")]
    assert read_node([*underscored, *rows[-2:]], MATCH, ATTRS).warnings == ()


CHART_FAMILIES = Path(__file__).parent.parent / "fixtures" / "jmx_exporter" / "atlassian-chart-families.txt"


def chart_families() -> dict[str, list[str]]:
    """The families Atlassian's chart serves, by their exact name, with their label names (the fixture)."""
    lines = [line.split() for line in CHART_FAMILIES.read_text().splitlines() if line and not line.startswith("#")]
    return {name: labels for name, *labels in lines}


def test_the_simulators_pages_use_the_case_and_labels_of_atlassians_chart() -> None:
    node = FarmNode("n1", syncs={"incremental": 3, "snapshot": 1, "farm_vet": 1})
    served = {
        family.name if family.type != "unknown" else sample.name: set(sample.labels)
        for text in (bitbucket_text(node), mesh_text(node))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    for name, labels in chart_families().items():
        assert name in served, f"{name} is what the chart serves"
        assert set(labels) <= served[name]


def test_a_page_in_the_charts_case_gives_tickets_and_timers_and_a_lowercased_one_the_same() -> None:
    page = (
        'metrics_throttling_Value{section="tickets",throttledResource="scm-hosting",name="available",} 7.0\n'
        'metrics_throttling_Value{section="tickets",throttledResource="scm-hosting",name="used",} 3.0\n'
        'com_atlassian_bitbucket_metrics_Count{category00="mirroring",category01="sync",name="incremental",} 9.0\n'
        'com_atlassian_bitbucket_metrics_Mean{category00="mirroring",category01="sync",name="incremental",} 20.0\n'
    )
    for text in (page, page.lower()):
        reading = read_node(parse_exporter_text(text, ATTRS), MATCH, ATTRS)
        assert {(t.resource, t.attribute): t.value for t in reading.tickets} == {
            ("scm-hosting", "available"): 7.0,
            ("scm-hosting", "used"): 3.0,
        }
        assert reading.timers["incremental"].count == 9 and reading.timers["incremental"].mean == pytest.approx(0.02)
