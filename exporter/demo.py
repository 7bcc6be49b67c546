"""``bitbucket-mirror-exporter demo``: a simulated primary with two mirrors (9.x and 8.x API) and the exporter."""

from __future__ import annotations

import logging

from exporter.app import Exporter, ListenAddress, stop_on_signals
from exporter.config import settings_from_mapping
from exporter.simulator import Scenario, SimulatedFarm
from exporter.web.config import WebConfig

log = logging.getLogger("exporter.demo")

DEMO_SCENARIO = Scenario(
    seed=42,
    projects=4,
    repositories=40,
    mirrors=2,
    push_rate=0.5,
    sync_delay_seconds=20.0,
    failing_repositories=2,
    zero_hash_repositories=1,
    missing_repositories=1,
    metadata_sync_delay_seconds=120.0,
)


async def run_demo(listen: ListenAddress, interval_seconds: float, web_config: WebConfig | None = None) -> None:
    stop = stop_on_signals()
    async with SimulatedFarm(DEMO_SCENARIO) as farm:
        settings = settings_from_mapping(farm.exporter_config(interval_seconds=interval_seconds))
        exporter = Exporter(settings, listen, web_config=web_config)
        await exporter.start()
        host = "127.0.0.1" if listen.host in ("0.0.0.0", "::", "") else listen.host
        scheme = "https" if web_config is not None and web_config.tls_server_config is not None else "http"
        print(f"Metrics: {scheme}://{host}:{exporter.port}/metrics", flush=True)
        print(f"Simulated primary: {farm.primary_url} (control API under /sim/)", flush=True)
        for name, url in farm.mirror_urls.items():
            print(f"Simulated mirror {name}: {url} ({farm.farm.mirrors[name].api_family} API)", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        try:
            await stop.wait()
        finally:
            await exporter.stop()
    log.info("demo stopped")
