"""A flood of wrong basic-auth passwords against the exporter's /metrics, and Prometheus's right password meanwhile.

    python3 bench/auth_flood.py                    # 400 wrong-password requests at bcrypt cost 12; prints the figures
    python3 bench/auth_flood.py --requests 50 --cost 8      # a quick look

The exporter runs in this process against a small simulated farm whose primary it reaches by the host name
``localhost`` (so its polls resolve names on the loop's default executor, as on a real network). The flood comes from
127.0.0.2 with 400 concurrent requests; from 127.0.0.1 a client with the right password (never checked before: the
worst case, as right after a reload) asks /metrics every 0.25 s until the flood is over. Printed: the right
password's first success after the flood began and its answers meanwhile, how the flood was answered, and how old the
primary's data got (polls unaffected: it stays within an interval or two).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import bcrypt

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from exporter.app import (  # noqa: E402
    Exporter,
    ListenAddress,
    settings_from_mapping,
)
from exporter.simulator import Scenario, SimulatedFarm  # noqa: E402
from exporter.web.config import WebConfig  # noqa: E402

USER, PASSWORD = "prometheus", "right-Pa55"
INTERVAL = 1.0


def basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{USER}:{password}".encode()).decode()}


async def measure(requests: int, cost: int) -> dict[str, float]:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(cost)).decode()
    async with SimulatedFarm(Scenario(repositories=20, mirrors=1, nodes=1)) as farm:
        config = farm.exporter_config(interval_seconds=INTERVAL, timeout_seconds=2.0)
        config["primary"]["url"] = farm.primary_url.replace("127.0.0.1", "localhost")
        exporter = Exporter(
            settings_from_mapping(config),
            ListenAddress("127.0.0.1", 0),
            web_config=WebConfig(basic_auth_users={USER: hashed}),
        )
        await exporter.start()
        try:
            deadline = time.monotonic() + 30
            # The first poll, before the flood (the state has no event to wait on).
            while exporter.state.primary.repositories.last_success_timestamp is None:
                if time.monotonic() > deadline:
                    raise TimeoutError("the primary was never polled")
                await asyncio.sleep(0.05)
            url = f"http://127.0.0.1:{exporter.port}/metrics"
            attacker = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), limit=0)
            flood_statuses: list[int] = []
            async with aiohttp.ClientSession(connector=attacker) as flood, aiohttp.ClientSession() as prometheus:

                async def wrong(i: int) -> None:
                    async with flood.get(url, headers=basic(f"guess-{i}")) as resp:
                        flood_statuses.append(resp.status)

                started = time.monotonic()
                flooding = asyncio.ensure_future(asyncio.gather(*(wrong(i) for i in range(requests))))
                answers: list[tuple[float, int]] = []
                oldest_data = 0.0
                first_success: float | None = None
                while not flooding.done() or first_success is None:
                    asked = time.monotonic()
                    async with prometheus.get(url, headers=basic(PASSWORD)) as resp:
                        await resp.read()
                        answers.append((time.monotonic() - asked, resp.status))
                        if resp.status == 200 and first_success is None:
                            first_success = time.monotonic() - started
                    last = exporter.state.primary.repositories.last_success_timestamp or 0.0
                    oldest_data = max(oldest_data, time.time() - last)
                    await asyncio.sleep(0.25)
                await flooding
                flood_seconds = time.monotonic() - started
        finally:
            await exporter.stop()
    ok = [seconds for seconds, status in answers if status == 200]
    return {
        "flood_requests": requests,
        "bcrypt_cost": cost,
        "flood_seconds": round(flood_seconds, 2),
        "flood_401": flood_statuses.count(401),
        "flood_429": flood_statuses.count(429),
        "right_password_first_success_s": round(first_success or -1, 3),
        "right_password_answers": len(answers),
        "right_password_429": sum(1 for _, status in answers if status == 429),
        "right_password_latency_max_ms": round(1000 * max(ok), 1) if ok else -1,
        "right_password_latency_median_ms": round(1000 * statistics.median(ok), 1) if ok else -1,
        "primary_data_oldest_s": round(oldest_data, 2),
        "poll_interval_s": INTERVAL,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--cost", type=int, default=12)
    args = parser.parse_args()
    for key, figure in asyncio.run(measure(args.requests, args.cost)).items():
        print(f"{key}: {figure}")


if __name__ == "__main__":
    main()
