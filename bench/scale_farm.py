"""The simulated farm bench/scale.py measures against, served from its own process.

Its own process, so that its CPU time is neither counted as the exporter's nor competing with it on the event loop,
and can be read from /proc on its own. It builds every page of the large listings before it says it is ready, so no
measured run pays for the first rendering. 1% of the repositories (``--drift``) were pushed on the primary and their
mirrors never catch up. Without ``--changes-per-cycle`` nothing else changes while it runs, so every steady cycle
downloads identical bytes; with it, each time a client's walk of the primary's listing ends, that share of the
repositories is pushed on the primary, and the mirrors sync the previous batch: between any two cycles pages really
change, as on a busy estate.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scale_clients import basic_auth
from exporter.simulator import Scenario, SimulatedFarm
from exporter.simulator.server import REST

NEVER = 10.0**9  # seconds: a sync delay the benchmark never reaches


def scenario(repositories: int, mirrors: int, page_cap: int, nodes: int = 1) -> Scenario:
    return Scenario(
        seed=1,
        projects=max(1, min(100, repositories // 100)),
        repositories=repositories,
        mirrors=mirrors,
        nodes=nodes,
        page_limit_cap=page_cap,
        sync_delay_seconds=NEVER,
        metadata_sync_delay_seconds=NEVER,
    )


def describe(farm: SimulatedFarm) -> dict[str, Any]:
    """What the clients need to know about the running farm (bench/scale_clients.py reads it)."""
    s = farm.scenario
    return {
        "primary": farm.primary_url,
        "mirrors": farm.mirror_urls,
        # With more than one node per mirror, the exporter reads every node at its own URL (nodes.url_template).
        "nodes": farm.node_urls if s.nodes > 1 else {},
        "node_http_port": farm.node_http_port,
        "repositories": s.repositories,
        "projects": s.projects,
        "page_cap": s.page_limit_cap,
        "username": s.username,
        "password": s.password,
    }


async def prerender(farm: SimulatedFarm) -> None:
    """Fetch every page of both large listings once, so the farm has built them all before any client measures."""
    auth = {"Authorization": basic_auth(describe(farm))}
    bases = [*farm.mirror_urls.values(), *(u for nodes in farm.node_urls.values() for u in nodes.values())]
    listings = [f"{u}{REST}/supportInfo/repoSyncStatus" for u in bases]
    cap, total = farm.scenario.page_limit_cap, farm.scenario.repositories
    async with aiohttp.ClientSession(headers=auth) as http:
        for url in [f"{farm.primary_url}{REST}/repos", *listings]:
            for start in range(0, max(total, 1), cap):
                async with http.get(url, params={"start": str(start), "limit": str(cap)}) as resp:
                    resp.raise_for_status()
                    await resp.read()


async def change_between_cycles(farm: SimulatedFarm, share: float, steady: set[int]) -> None:
    """After each walk of the primary's listing: push ``share`` of the repositories (never the drifting ones nor the
    clients' probes) and let the mirrors sync the batch pushed after the walk before."""
    walk_pages = -(-farm.scenario.repositories // farm.scenario.page_limit_cap)
    count = max(1, round(farm.scenario.repositories * share))
    candidates = sorted(steady)
    walks_seen, previous = 0, list[int]()
    while True:
        walks = farm.farm.primary_requests.get("repos", 0) // walk_pages
        if walks > walks_seen:
            walks_seen = walks
            farm.farm.sync_now(previous)
            previous = farm.farm.rng.sample(candidates, count)
            for repo_id in previous:
                farm.farm.push(repo_id)
        await asyncio.sleep(0.005)


async def serve(repositories: int, mirrors: int, page_cap: int, drift: float, nodes: int, changes: float) -> None:
    farm = SimulatedFarm(scenario(repositories, mirrors, page_cap, nodes), ["9.x"] * mirrors)
    drifting = farm.farm.rng.sample(sorted(farm.farm.repositories), round(repositories * drift))
    for repo_id in drifting:
        farm.farm.push(repo_id)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with farm:
        await prerender(farm)
        # Millions of long-lived objects: without this, the collector's full passes over them stall the farm at
        # random moments and make the floor's figures noisy.
        gc.freeze()
        # Repositories every mirror has in step: bench/scale_clients.py pushes some to time how soon drift shows.
        in_step = sorted(set(farm.farm.repositories) - set(drifting))[-10:]
        changing = None
        if changes > 0:
            steady = set(farm.farm.repositories) - set(drifting) - set(in_step)
            changing = asyncio.create_task(change_between_cycles(farm, changes, steady))
        description = {**describe(farm), "drifting": len(drifting), "in_step": in_step, "changes_per_cycle": changes}
        print(json.dumps(description), flush=True)
        await stop.wait()
        if changing is not None:
            changing.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repositories", type=int, required=True)
    parser.add_argument("--mirrors", type=int, required=True)
    parser.add_argument("--page-cap", type=int, default=100)
    parser.add_argument("--drift", type=float, default=0.01)
    parser.add_argument("--nodes", type=int, default=1, help="nodes per mirror farm; above 1 read node by node")
    parser.add_argument(
        "--changes-per-cycle", type=float, default=0.0, help="share of repositories pushed between two cycles"
    )
    args = parser.parse_args()
    asyncio.run(serve(args.repositories, args.mirrors, args.page_cap, args.drift, args.nodes, args.changes_per_cycle))


if __name__ == "__main__":
    main()
