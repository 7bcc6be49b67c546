"""``/probe/node`` behind a real HAProxy (Debian's package), as docs/nodes-behind-a-load-balancer.md configures it:
each simulated node a server, checked at the exporter with ``http-check send ... uri-lf ...&node=%[srv_name]``. A node
that falls behind its peers is taken out; once it catches up it is put back; a peer in step stays in throughout."""

from __future__ import annotations

import asyncio
import csv
import io
import socket
from pathlib import Path
from typing import Any

from exporter.simulator import Scenario
from tests.conftest import Running, running_farm, wait_until
from tests.tools import binary

INTERVAL = 0.2


def haproxy_config(run: Running, socket_path: Path) -> str:
    farm = run.farm
    nodes = farm.farm.mirrors["sydney"].farm_nodes
    servers = "\n".join(f"    server {n.name} {n.address}:{farm.node_http_port} check" for n in nodes)
    # The check goes to the exporter (addr/port), asking about the server by its name: the node's name in farmNodes.
    return f"""
global
    stats socket {socket_path} level admin
defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
backend sydney
    option httpchk
    http-check send meth GET uri-lf /probe/node?mirror=sydney&node=%[srv_name]
    http-check expect status 200
    default-server inter 200ms fall 2 rise 2 addr 127.0.0.1 port {run.exporter.port}
{servers}
"""


def server_status(socket_path: Path) -> dict[str, str]:
    """Each server's status (UP, DOWN, ...) from HAProxy's own stats socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5)
        conn.connect(str(socket_path))
        conn.sendall(b"show stat\n")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
    return {row["svname"]: row["status"] for row in rows if row["pxname"] == "sydney" and row["svname"] != "BACKEND"}


def enable_probe(_farm: Any, config: dict[str, Any]) -> None:
    config["probe"] = {"enabled": True, "max_lag_seconds": 1.0}


async def test_haproxy_takes_a_node_behind_its_peers_out_and_puts_it_back(tmp_path: Path) -> None:
    haproxy = binary("haproxy", "haproxy")
    scenario = Scenario(repositories=6, mirrors=1)
    async with running_farm(scenario, ["9.x"], interval=INTERVAL, nodes=True, prepare=enable_probe) as run:
        await run.wait_ready()
        names = sorted(n.name for n in run.farm.farm.mirrors["sydney"].farm_nodes)
        behind, peer = names[-1], names[0]
        config, socket_path = tmp_path / "haproxy.cfg", tmp_path / "haproxy.sock"
        config.write_text(haproxy_config(run, socket_path))
        checked = await asyncio.create_subprocess_exec(
            haproxy, "-c", "-f", str(config), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await asyncio.wait_for(checked.communicate(), 30)
        assert checked.returncode == 0, output.decode()
        log = (tmp_path / "haproxy.log").open("wb")
        proxy = await asyncio.create_subprocess_exec(haproxy, "-db", "-f", str(config), stdout=log, stderr=log)
        try:

            async def status_is(wanted: dict[str, str]) -> bool:
                if not socket_path.exists():
                    return False
                found = await asyncio.to_thread(server_status, socket_path)
                return all(found.get(name) == state for name, state in wanted.items())

            await wait_until(lambda: status_is({n: "UP" for n in names}), 15, "every node UP while in step")

            # One node stops syncing; a push leaves it behind its peers past probe.max_lag_seconds.
            await run.control(f"/sim/mirrors/sydney/nodes/{behind}", {"frozen": True})
            await run.control("/sim/push", {"repository_ids": [3]})
            await wait_until(lambda: status_is({behind: "DOWN", peer: "UP"}), 20, f"{behind} taken out")
            status, reason = await run.get(f"/probe/node?mirror=sydney&node={behind}")
            assert status == 503 and reason.startswith("behind: 1 repositories behind for over 1 s"), reason

            # It syncs again and catches up: put back.
            await run.control(f"/sim/mirrors/sydney/nodes/{behind}", {"frozen": False})
            await wait_until(lambda: status_is({n: "UP" for n in names}), 20, f"{behind} put back")
            assert (await run.get(f"/probe/node?mirror=sydney&node={behind}"))[0] == 200
        finally:
            proxy.terminate()
            try:
                await asyncio.wait_for(proxy.wait(), 10)
            except TimeoutError:
                proxy.kill()
                await asyncio.wait_for(proxy.wait(), 10)
            log.close()


async def test_the_probe_is_off_unless_enabled_and_bounded_when_on() -> None:
    scenario = Scenario(repositories=3, mirrors=1)
    async with running_farm(scenario, ["9.x"], interval=INTERVAL, nodes=True) as run:
        await run.wait_ready()
        node = run.farm.farm.mirrors["sydney"].farm_nodes[0].name
        assert (await run.get(f"/probe/node?mirror=sydney&node={node}"))[0] == 404  # off by default
    async with running_farm(scenario, ["9.x"], interval=INTERVAL, nodes=True, prepare=enable_probe) as run:
        await run.wait_ready()
        assert (await run.get("/probe/node?mirror=sydney&node=nowhere"))[0] == 404
        assert (await run.get("/probe/node?mirror=sydney"))[0] == 400
        run.exporter.settings.probe.max_requests_per_second = 5.0
        answers = [(await run.get(f"/probe/node?mirror=sydney&node={node}"))[0] for _ in range(12)]
        assert answers.count(429) >= 12 - 5 - 2, answers  # a burst of a second's worth, then refused
        assert answers[0] == 200
