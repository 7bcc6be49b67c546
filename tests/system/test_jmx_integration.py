"""The exporter reading mirror nodes over JMX: a real JVM per node, jmxquery, and /metrics over loopback HTTP."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import pytest

from exporter.simulator import Scenario, SimulatedFarm
from tests.conftest import Running, running_farm, value, wait_until
from tests.jmx_node import (
    INCREMENTAL,
    SNAPSHOT,
    TICKETS,
    Timer,
    alive,
    fake_node,
    jmxquery_processes_for,
    processes_mentioning,
    silent_endpoint,
)
from tests.tools import lint, undocumented

SCENARIO = Scenario(repositories=5, mirrors=1)
PASSWORD = "jmx-pa55-do-not-leak"


def with_jmx(jmx: dict[str, Any]) -> Any:
    def prepare(farm: SimulatedFarm, config: dict[str, Any]) -> None:
        config["mirrors"][0]["jmx"] = {"interval_seconds": 1, **jmx}

    return prepare


async def metric(run: Running, name: str, **labels: str) -> float | None:
    return value(await run.metrics(), name, **labels)


async def wait_for_metric(run: Running, expected: float, name: str, **labels: str) -> None:
    async def seen() -> bool:
        return await metric(run, name, **labels) == expected

    await wait_until(seen, 30, f"{name}{labels} == {expected}")


async def test_node_timers_reach_metrics_and_a_hung_node_stalls_nothing(
    fake_node_classes: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    password_file = tmp_path / "jmx-password"
    password_file.write_text(PASSWORD + "\n")
    async with (
        fake_node(fake_node_classes, auth=("monitor", PASSWORD)) as node,
        silent_endpoint() as silent_port,
    ):
        await node.timer(INCREMENTAL, Timer(count=42))
        await node.timer(SNAPSHOT, Timer(duration_unit="seconds", count=3, p99=12.5, one_minute_rate=0.25))
        await node.gauge(TICKETS, Available=8, Used=2)
        hung_url = f"service:jmx:rmi:///jndi/rmi://127.0.0.1:{silent_port}/jmxrmi"
        jmx = {
            "username": "monitor",
            "password_file": str(password_file),
            "timeout_seconds": 60,
            "nodes": [{"name": "node-a", "url": node.url}, {"name": "node-b", "url": hung_url}],
        }
        async with running_farm(SCENARIO, ["9.x"], prepare=with_jmx(jmx)) as run:
            await wait_for_metric(run, 42, "bitbucket_mirror_node_syncs_total", mirror="sydney", node="node-a",
                                  sync="incremental")  # fmt: skip
            samples = await run.metrics()
            a = {"mirror": "sydney", "node": "node-a"}
            assert value(samples, "bitbucket_mirror_jmx_up", **a) == 1
            q = "bitbucket_mirror_node_sync_duration_seconds"
            assert value(samples, q, **a, sync="incremental", quantile="0.5") == pytest.approx(0.1)
            assert value(samples, q, **a, sync="incremental", quantile="0.999") == pytest.approx(0.2)
            assert value(samples, q, **a, sync="snapshot", quantile="0.99") == 12.5
            assert value(
                samples,
                "bitbucket_mirror_node_sync_duration_mean_seconds",
                mirror=a["mirror"],
                node=a["node"],
                sync="incremental",
            ) == (pytest.approx(0.1205))
            assert value(
                samples,
                "bitbucket_mirror_node_sync_duration_max_seconds",
                mirror=a["mirror"],
                node=a["node"],
                sync="incremental",
            ) == (pytest.approx(0.25))
            assert value(samples, "bitbucket_mirror_node_sync_rate", **a, sync="snapshot") == 0.25
            assert value(samples, "bitbucket_mirror_node_tickets", **a, resource="scm-hosting", attribute="Used") == 2
            assert value(samples, "bitbucket_mirror_node_jmx_bean_info", **a, kind="incremental",
                         object_name=INCREMENTAL) == 1  # fmt: skip

            # node-b's first poll hangs for up to 60 s; node-a keeps being polled meanwhile, and scrapes answer.
            await node.timer(INCREMENTAL, Timer(count=43))
            await wait_for_metric(
                run, 43, "bitbucket_mirror_node_syncs_total", mirror=a["mirror"], node=a["node"], sync="incremental"
            )
            hung = run.exporter.state.jmx["sydney"]["node-b"].source
            assert not hung.polled
            assert value(await run.metrics(), "bitbucket_mirror_jmx_up", mirror="sydney", node="node-b") is None
            _, text = await run.get("/metrics")
            result = lint(text)
            assert result.returncode == 0, result.stdout + result.stderr
            assert not undocumented(text), f"not in docs/metrics.md: {sorted(undocumented(text))}"
            _, landing = await run.get("/")
            hung_jvms = jmxquery_processes_for(hung_url)
            assert hung_jvms, "node-b's JVM is still waiting on its silent socket"
        # Stopping the exporter kills the hung node's JVM.
        assert alive(hung_jvms) == []
    everything = text + landing + caplog.text
    assert PASSWORD not in everything


async def test_a_node_that_times_out_is_down_with_a_reason_and_keeps_its_last_values(fake_node_classes: Path) -> None:
    async with fake_node(fake_node_classes) as node:
        await node.timer(INCREMENTAL, Timer(count=9))
        jmx = {"timeout_seconds": 1.5, "nodes": [{"name": "n1", "url": node.url}]}
        async with running_farm(SCENARIO, ["9.x"], prepare=with_jmx(jmx)) as run:
            n1 = {"mirror": "sydney", "node": "n1"}
            await wait_for_metric(
                run, 9, "bitbucket_mirror_node_syncs_total", mirror=n1["mirror"], node=n1["node"], sync="incremental"
            )
            # Freeze the node's JVM: connections are accepted by the kernel but nothing answers.
            node.process.send_signal(signal.SIGSTOP)
            try:
                await wait_for_metric(run, 0, "bitbucket_mirror_jmx_up", mirror=n1["mirror"], node=n1["node"])
                samples = await run.metrics()
                errors = value(samples, "bitbucket_mirror_exporter_jmx_poll_errors_total", **n1, reason="timeout")
                assert errors is not None and errors >= 1
                # Stale, not gone: the last reading is still served.
                assert (
                    value(
                        samples,
                        "bitbucket_mirror_node_syncs_total",
                        mirror=n1["mirror"],
                        node=n1["node"],
                        sync="incremental",
                    )
                    == 9
                )
            finally:
                node.process.send_signal(signal.SIGCONT)
            await wait_for_metric(run, 1, "bitbucket_mirror_jmx_up", mirror=n1["mirror"], node=n1["node"])


async def test_nodes_from_farm_nodes_with_a_jmx_port(fake_node_classes: Path) -> None:
    async with fake_node(fake_node_classes) as node:
        await node.timer(INCREMENTAL, Timer(count=1))
        async with running_farm(SCENARIO, ["9.x"], prepare=with_jmx({"port": node.port})) as run:
            # The simulated farm lists two nodes on their own loopback addresses; both reach the one fake JVM, which
            # listens on every address.
            for name in ("sydney-node-1", "sydney-node-2"):
                await wait_for_metric(run, 1, "bitbucket_mirror_jmx_up", mirror="sydney", node=name)
            address = run.farm.farm.mirrors["sydney"].farm_nodes[0].address
            assert run.exporter.state.jmx["sydney"]["sydney-node-1"].url == node.url.replace("127.0.0.1", address)


async def test_each_nodes_mesh_sidecar_gives_its_four_ticket_kinds_apart(fake_node_classes: Path) -> None:
    async with fake_node(fake_node_classes) as bitbucket, fake_node(fake_node_classes) as sidecar:
        await bitbucket.timer(INCREMENTAL, Timer(count=3))
        for resource, used in (("scm-hosting", 2), ("scm-command", 1), ("scm-refs", 0), ("git-lfs", 4)):
            for figure, number in (("available", 10 - used), ("used", used)):
                await sidecar.gauge(f"metrics:section=tickets,throttledResource={resource},name={figure}", Value=number)
        jmx = {"port": bitbucket.port, "mesh_port": sidecar.port, "interval_seconds": 1}
        async with running_farm(SCENARIO, ["9.x"], prepare=with_jmx(jmx)) as run:
            labels = {"mirror": "sydney", "node": "sydney-node-1"}
            tickets = "bitbucket_mirror_node_tickets"
            await wait_for_metric(run, 4, tickets, **labels, resource="git-lfs", attribute="used")
            samples = await run.metrics()
            assert value(samples, tickets, **labels, resource="scm-hosting", attribute="available") == 8
            assert value(samples, tickets, **labels, resource="scm-refs", attribute="used") == 0
            assert value(samples, "bitbucket_mirror_node_syncs_total", **labels, sync="incremental") == 3


async def test_the_jmx_password_is_on_no_command_line_while_a_real_jvm_that_wants_it_is_polled(
    fake_node_classes: Path, tmp_path: Path
) -> None:
    import asyncio

    password_file = tmp_path / "jmx-password"
    password_file.write_text(PASSWORD + "\n")
    async with fake_node(fake_node_classes, auth=("monitor", PASSWORD)) as node:
        await node.timer(INCREMENTAL, Timer(count=5))
        jmx = {"username": "monitor", "password_file": str(password_file), "nodes": [{"name": "n", "url": node.url}]}
        async with running_farm(SCENARIO, ["9.x"], prepare=with_jmx(jmx)) as run:
            leaked: list[int] = []
            jvms: set[int] = set()
            stop = asyncio.Event()

            async def sample() -> None:
                # Every 5 ms, every process's command line: the jmxquery JVMs come and go each poll.
                while not stop.is_set():
                    # jmxquery's JVMs (their jar named, or their argument file) with the password in sight; the fake
                    # nodes take it on their own command lines, and are the tests', not the exporter's.
                    ours = set(processes_mentioning("JMXQuery")) | set(processes_mentioning("/bme-jmx-"))
                    leaked.extend(pid for pid in processes_mentioning(PASSWORD) if pid in ours)
                    jvms.update(processes_mentioning("/bme-jmx-"))
                    await asyncio.sleep(0.005)

            sampler = asyncio.create_task(sample())
            await wait_for_metric(run, 5, "bitbucket_mirror_node_syncs_total", mirror="sydney", node="n",
                                  sync="incremental")  # fmt: skip
            await node.timer(INCREMENTAL, Timer(count=6))  # one more successful poll, watched from start to end
            await wait_for_metric(run, 6, "bitbucket_mirror_node_syncs_total", mirror="sydney", node="n",
                                  sync="incremental")  # fmt: skip
            stop.set()
            await sampler
            assert leaked == [], "the JMX password was on a command line"
            assert jvms, "the sampler saw no jmxquery JVM (it would prove nothing)"
