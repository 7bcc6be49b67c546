"""``bitbucket-mirror-exporter demo``: a simulated primary with two mirror farms of three nodes each (9.x and 8.x API)
and the exporter reading every node."""

from __future__ import annotations

import asyncio
import logging
import secrets
import tempfile
from pathlib import Path

from exporter.app import Exporter, ListenAddress, settings_from_mapping, stop_on_signals
from exporter.simulator import Scenario, SimulatedFarm
from exporter.simulator.webhook_target import WebhookTarget
from exporter.web.config import WebConfig

log = logging.getLogger("exporter.demo")

DEMO_SCENARIO = Scenario(
    seed=42,
    projects=4,
    repositories=40,
    mirrors=2,
    nodes=3,
    push_rate=0.5,
    sync_delay_seconds=20.0,
    failing_repositories=2,
    zero_hash_repositories=1,
    missing_repositories=1,
    metadata_sync_delay_seconds=120.0,
)


DEMO_HELD_ON_ONE_NODE = (5, 17, 29)


async def run_demo(
    listen: ListenAddress,
    interval_seconds: float,
    web_config: WebConfig | None = None,
    external_url: str | None = None,
) -> None:
    stop = stop_on_signals()
    # The simulated primary signs its webhooks with a secret of the demo's own, in a file as a deployment keeps it.
    secret = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="bitbucket-mirror-demo-") as work:
        secret_file = Path(work) / "webhook-secret"
        secret_file.write_text(secret)
        await _demo(listen, interval_seconds, web_config, stop, secret, secret_file, external_url)
    log.info("demo stopped")


async def _demo(
    listen: ListenAddress,
    interval_seconds: float,
    web_config: WebConfig | None,
    stop: asyncio.Event,
    secret: str,
    secret_file: Path,
    external_url: str | None,
) -> None:
    async with SimulatedFarm(DEMO_SCENARIO) as farm:
        # One node of sydney stuck on a few repositories its peers sync: what BitbucketMirrorNodeBehind is for.
        farm.farm.mirrors["sydney"].farm_nodes[2].held = set(DEMO_HELD_ON_ONE_NODE)
        config = farm.exporter_config(interval_seconds=interval_seconds, nodes=True)
        for mirror in config["mirrors"]:
            # Sync timers and tickets from each node's jmx_exporter text, as Atlassian's chart serves them.
            mirror["jmx"] = {
                "exporter_url_template": farm.node_url_template("/jmx/bitbucket"),
                "mesh_exporter_url_template": farm.node_url_template("/jmx/mesh"),
                "interval_seconds": max(1.0, interval_seconds),
            }
        config["webhooks"] = {"secret_file": str(secret_file)}
        settings = settings_from_mapping(config)
        exporter = Exporter(settings, listen, web_config=web_config, external_url=external_url)
        await exporter.start()
        host = "127.0.0.1" if listen.host in ("0.0.0.0", "::", "") else listen.host
        scheme = "https" if web_config is not None and web_config.tls_server_config is not None else "http"
        if scheme == "http":
            # Every push and every mirror's sync of it, timed (docs/webhooks.md); and the CI gate answers from them.
            farm.add_webhook(WebhookTarget(f"http://{host}:{exporter.port}/webhooks/bitbucket", secret))
        print(f"Metrics: {scheme}://{host}:{exporter.port}/metrics", flush=True)
        print(f"Simulated primary: {farm.primary_url} (control API under /sim/)", flush=True)
        for name, url in farm.mirror_urls.items():
            print(f"Simulated mirror {name}: {url} ({farm.farm.mirrors[name].api_family} API)", flush=True)
            for node, node_url in farm.node_urls[name].items():
                print(f"  node {node}: {node_url} (jmx_exporter text at /jmx/bitbucket, /jmx/mesh)", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        try:
            await stop.wait()
        finally:
            await exporter.stop()
