"""JMX collection: reading timer MBeans (pure), and jmxquery against a real JVM serving them over real JMX."""

from __future__ import annotations

import asyncio
from pathlib import Path

import jmxquery
import pytest

from exporter.jmx.config import JmxMatch, TimerAttributes
from exporter.jmx.query import JmxRow, classify_failure, jmxquery_command, parse_rows, run_jmxquery
from exporter.jmx.reading import key_property, per_second, read_node, unit_seconds
from exporter.sources import FetchError
from tests.conftest import wait_until
from tests.jmx_node import (
    FARM_VET,
    INCREMENTAL,
    SNAPSHOT,
    TICKETS,
    Timer,
    alive,
    fake_node,
    java_tool,
    jmxquery_processes_for,
    silent_endpoint,
)

ATTRS = TimerAttributes()
MATCH = JmxMatch()
QUERY = ["com.atlassian.bitbucket*:*"]


def timer_rows(object_name: str, unit: str = "milliseconds", rate_unit: str = "events/second") -> list[JmxRow]:
    values = {
        "Count": 7,
        "Mean": 1500.0,
        "Max": 3000,
        "Min": "250",  # numbers sent as strings are read as numbers
        "StdDev": 100.0,
        "50thPercentile": 1000.0,
        "99thPercentile": 2900.0,
        "OneMinuteRate": 6.0,
        "DurationUnit": unit,
        "RateUnit": rate_unit,
    }
    return [JmxRow(object_name, name, value) for name, value in values.items()]


def test_timer_durations_are_converted_to_seconds_and_rates_to_per_second() -> None:
    reading = read_node(timer_rows(INCREMENTAL, rate_unit="events/minute"), MATCH, ATTRS)
    timer = reading.timers["incremental"]
    assert timer.count == 7
    assert timer.quantiles == {"0.5": 1.0, "0.99": 2.9}
    assert (timer.mean, timer.max, timer.min, timer.stddev) == (1.5, 3.0, 0.25, 0.1)
    assert timer.rate_per_second == pytest.approx(0.1)
    assert reading.warnings == ()


@pytest.mark.parametrize(
    ("unit", "seconds"),
    [("milliseconds", 1e-3), ("MILLISECONDS", 1e-3), ("Milliseconds", 1e-3), ("microseconds", 1e-6),
     ("NANOSECONDS", 1e-9), ("seconds", 1.0), ("ms", 1e-3), ("minutes", 60.0)],
)  # fmt: skip
def test_duration_units_as_java_and_dropwizard_spell_them(unit: str, seconds: float) -> None:
    assert unit_seconds(unit) == seconds


def test_rate_units() -> None:
    assert per_second("events/second") == 1.0
    assert per_second("calls/minute") == pytest.approx(1 / 60)
    assert per_second("events/fortnight") is None


def test_an_unknown_duration_unit_drops_durations_not_counts() -> None:
    reading = read_node(timer_rows(SNAPSHOT, unit="jiffies"), MATCH, ATTRS)
    timer = reading.timers["snapshot"]
    assert timer.count == 7 and timer.rate_per_second == 6.0
    assert timer.quantiles == {} and timer.mean is None
    assert any("jiffies" in w for w in reading.warnings)


def test_beans_are_classified_by_name_and_only_timers_count_as_syncs() -> None:
    rows = [
        *timer_rows(INCREMENTAL),
        *timer_rows(SNAPSHOT),
        *timer_rows(FARM_VET),
        # A counter named like a sync but without timings is not a sync timer.
        JmxRow("com.atlassian.bitbucket.mirroring:name=IncrementalSyncFailures", "Count", 3),
        JmxRow(TICKETS, "Available", 8),
        JmxRow(TICKETS, "Used", "2"),
        JmxRow(TICKETS, "Description", "not a number"),
        JmxRow("com.atlassian.bitbucket:name=Unrelated", "Count", 1),
    ]
    reading = read_node(rows, MATCH, ATTRS)
    assert {kind: t.object_name for kind, t in reading.timers.items()} == {
        "incremental": INCREMENTAL,
        "snapshot": SNAPSHOT,
        "farm_vet": FARM_VET,
    }
    assert [(t.resource, t.attribute, t.value) for t in reading.tickets] == [
        ("scm-hosting", "Available", 8.0),
        ("scm-hosting", "Used", 2.0),
    ]
    assert reading.beans == 6


def test_two_beans_for_one_kind_keep_the_first_by_name_and_warn() -> None:
    second = "com.atlassian.bitbucket.mirroring:type=Sync,name=IncrementalSyncTime2"
    reading = read_node([*timer_rows(second), *timer_rows(INCREMENTAL)], MATCH, ATTRS)
    assert reading.timers["incremental"].object_name == INCREMENTAL
    assert len(reading.warnings) == 1 and second in reading.warnings[0]


def test_names_and_attributes_are_configurable() -> None:
    rows = [JmxRow("acme:name=Pull", "Hits", 5), JmxRow("acme:name=Pull", "Median", 2.0)]
    attrs = TimerAttributes(count="Hits", quantiles={"0.5": "Median"}, duration_unit="Unit")
    reading = read_node(rows, JmxMatch(incremental="Pull"), attrs)
    assert reading.timers["incremental"].count == 5
    assert reading.timers["incremental"].quantiles == {"0.5": 0.002}  # no DurationUnit: milliseconds


def test_key_property() -> None:
    assert key_property('a.b:type=X,name="quoted,name"', "name") == "quoted,name"
    assert key_property("a.b:type=X", "name") is None


def test_one_jmxquery_invocation_carries_every_query() -> None:
    command = jmxquery_command("java", ["-Xmx64m"], "service:jmx:x", "u", "pw", ["a:*", "b:name=c"])
    assert command[:4] == ["java", "-Xmx64m", "-jar", jmxquery.JAR_PATH]
    assert command[command.index("-q") + 1] == "a:*;b:name=c;"
    assert command[command.index("-u") + 1] == "u" and command[command.index("-p") + 1] == "pw"
    assert "-u" not in jmxquery_command("java", [], "service:jmx:x", None, None, ["a:*"])


def test_output_that_jmxquery_failed_to_escape_loses_only_the_broken_line() -> None:
    stdout = (
        '[\n{"mBeanName" : "a:name=x", "attribute" : "Count", "attributeType" : "Long", "value" : 3}, \n'
        '{"mBeanName" : "a:name=x", "attribute" : "Path", "attributeType" : "String", "value" : "C:\\q"}, \n'
        '{"mBeanName" : "a:name=x", "attribute" : "Load", "attributeType" : "CompositeDataSupport", '
        '"attributeKey" : "used", "value" : 9}]'
    )
    assert parse_rows(stdout) == [JmxRow("a:name=x", "Count", 3), JmxRow("a:name=x", "Load.used", 9)]
    with pytest.raises(FetchError) as caught:
        parse_rows("Picked up JAVA_TOOL_OPTIONS: oops")
    assert caught.value.reason == "invalid_output"


@pytest.mark.parametrize(
    ("stdout", "stderr", "reason"),
    [
        ('{ "error": "connection-error", "message":"refused"}', "", "connection"),
        ('{ "error": "bad-query", "message":"Key properties cannot be empty"}', "", "bad_query"),
        ("", 'Exception in thread "main" java.lang.SecurityException: Authentication failed', "auth"),
        ("", "Error: Unable to access jarfile /x.jar", "java_failed"),
        ("", "something else", "jmx_error"),
    ],
)
def test_failures_have_a_reason(stdout: str, stderr: str, reason: str) -> None:
    assert classify_failure(1, stdout, stderr)[0] == reason


# --- a real JVM over real JMX --------------------------------------------------------------------------------------


def command_for(url: str, auth: tuple[str, str] | None = None, names: list[str] = QUERY) -> list[str]:
    user, password = auth if auth is not None else (None, None)
    return jmxquery_command(java_tool("java"), [], url, user, password, names)


async def test_jmxquery_reads_the_timers_the_jvm_serves(fake_node_classes: Path) -> None:
    async with fake_node(fake_node_classes) as node:
        await node.timer(INCREMENTAL, Timer(count=42, p50=100.0, p999=200.0, max=250.0))
        await node.timer(SNAPSHOT, Timer(duration_unit="seconds", count=3, p99=12.5, one_minute_rate=0.25))
        await node.gauge(TICKETS, Available=8, Used=2)
        rows = await run_jmxquery(command_for(node.url), 30)
    reading = read_node(rows, MATCH, ATTRS)
    incremental, snapshot = reading.timers["incremental"], reading.timers["snapshot"]
    assert incremental.count == 42
    assert incremental.quantiles["0.5"] == pytest.approx(0.1)
    assert incremental.quantiles["0.999"] == pytest.approx(0.2)
    assert incremental.max == pytest.approx(0.25)
    assert snapshot.count == 3 and snapshot.quantiles["0.99"] == 12.5 and snapshot.rate_per_second == 0.25
    assert {(t.attribute, t.value) for t in reading.tickets} == {("Available", 8.0), ("Used", 2.0)}


async def test_jmx_authentication(fake_node_classes: Path) -> None:
    async with fake_node(fake_node_classes, auth=("monitor", "s3cret-jmx")) as node:
        await node.timer(INCREMENTAL, Timer(count=5))
        rows = await run_jmxquery(command_for(node.url, ("monitor", "s3cret-jmx")), 30, "s3cret-jmx")
        assert read_node(rows, MATCH, ATTRS).timers["incremental"].count == 5
        for auth in (("monitor", "wrong"), None):
            with pytest.raises(FetchError) as caught:
                await run_jmxquery(command_for(node.url, auth), 30, "wrong")
            assert caught.value.reason == "auth", caught.value.detail
            assert "wrong" not in str(caught.value)


async def test_a_pattern_that_matches_nothing_is_an_empty_answer(fake_node_classes: Path) -> None:
    async with fake_node(fake_node_classes) as node:
        assert await run_jmxquery(command_for(node.url, names=["nothing.here:*"]), 30) == []


async def test_a_refused_connection_is_reported() -> None:
    async with silent_endpoint() as port:
        pass  # closed again: nothing listens on the port now
    with pytest.raises(FetchError) as caught:
        await run_jmxquery(command_for(f"service:jmx:rmi:///jndi/rmi://127.0.0.1:{port}/jmxrmi"), 30)
    assert caught.value.reason == "connection"


async def test_a_node_that_never_answers_is_killed_at_the_time_limit() -> None:
    async with silent_endpoint() as port:
        url = f"service:jmx:rmi:///jndi/rmi://127.0.0.1:{port}/jmxrmi"
        task = asyncio.create_task(run_jmxquery(command_for(url), 2.0))
        pids: list[int] = []

        async def started() -> bool:
            pids.extend(jmxquery_processes_for(url))
            return bool(pids)

        await wait_until(started, 15, "the jmxquery JVM to start")
        with pytest.raises(FetchError) as caught:
            await task
        assert caught.value.reason == "timeout"
        # Without the kill the JVM would wait on the silent socket forever: it must be gone, not left running.
        assert alive(pids) == []


async def test_a_missing_java_is_reported_without_the_command_line() -> None:
    command = jmxquery_command("/nonexistent/java", [], "service:jmx:x", "u", "pw-secret", QUERY)
    with pytest.raises(FetchError) as caught:
        await run_jmxquery(command, 5, "pw-secret")
    assert caught.value.reason == "java_missing"
    assert "pw-secret" not in str(caught.value)


async def test_cancelling_a_poll_kills_its_jvm() -> None:
    async with silent_endpoint() as port:
        url = f"service:jmx:rmi:///jndi/rmi://127.0.0.1:{port}/jmxrmi"
        task = asyncio.create_task(run_jmxquery(command_for(url), 60))

        pids: list[int] = []

        async def started() -> bool:
            pids.extend(jmxquery_processes_for(url))
            return bool(pids)

        await wait_until(started, 15, "the jmxquery JVM to start")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert alive(pids) == []
