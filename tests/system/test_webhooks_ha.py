"""High availability: two exporter replicas, each with its own webhook URL, fed every delivery by the primary,
answer the same: the same histograms, the same CI gate answers."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from exporter.app import Exporter, ListenAddress, settings_from_mapping
from exporter.simulator import Scenario
from exporter.simulator.webhook_target import WebhookTarget
from tests.conftest import LOOPBACK, Samples, parse_metrics, running_farm, wait_until
from tests.system.test_webhooks import SECRET, with_webhooks

LATENCY = "bitbucket_mirror_push_to_sync_seconds"


def histograms(samples: Samples) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {key: v for key, v in samples.items() if key[0].startswith(LATENCY)}


async def test_two_replicas_fed_the_same_deliveries_agree(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    scenario = Scenario(repositories=6, mirrors=2, sync_delay_seconds=2.0)
    async with running_farm(scenario, ["9.x", "8.x"], interval=0.5, prepare=with_webhooks(secret_file)) as run:
        config = run.farm.exporter_config(interval_seconds=0.5, timeout_seconds=2.0)
        config["webhooks"] = {"secret_file": str(secret_file)}
        replica = Exporter(settings_from_mapping(config), ListenAddress(LOOPBACK, 0), max_rendering_age=0)
        await replica.start()
        try:
            other = f"http://{LOOPBACK}:{replica.port}"
            # One webhook per replica URL, as `webhooks apply --url A --url B` creates them.
            for base in (run.url, other):
                run.farm.add_webhook(WebhookTarget(base + "/webhooks/bitbucket", SECRET))
            await run.wait_ready()
            await run.control("/sim/push", {"repository_ids": [2, 5]})
            repo = run.farm.farm.repositories[5]
            gate = f"/api/v1/repositories/{repo.project.key}/{repo.slug}/mirrors?commit={repo.commit(2)}"
            answers: list[object] = []

            async def both_saw_every_sync() -> bool:
                async with aiohttp.ClientSession() as http:
                    texts = []
                    for base in (run.url, other):
                        async with http.get(base + "/metrics") as resp:
                            texts.append(parse_metrics(await resp.text()))
                counts = [sum(v for (name, _), v in samples.items() if name == LATENCY + "_count") for samples in texts]
                return counts == [4.0, 4.0] and histograms(texts[0]) == histograms(texts[1])

            await wait_until(both_saw_every_sync, 20, "both replicas observed the 4 syncs alike")
            async with aiohttp.ClientSession() as http:
                for base in (run.url, other):
                    async with http.get(base + gate) as resp:
                        body = await resp.json()
                        # known_at and lag differ by when each polled; the webhook-borne facts must not.
                        answers.append(
                            [(m["mirror"], m["has_commit"], m["synced_at"]) for m in body["mirrors"]]
                            + [body["pushed_at"]]
                        )
            assert answers[0] == answers[1], json.dumps(answers)
        finally:
            await replica.stop()


async def test_two_replicas_asked_the_same_question_never_disagree_for_longer_than_an_interval_and_a_delivery(
    tmp_path: Path,
) -> None:
    import asyncio
    import time

    interval, delay = 0.5, 0.3
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    scenario = Scenario(repositories=6, mirrors=2, sync_delay_seconds=1.0)
    async with running_farm(scenario, ["9.x", "8.x"], interval=interval, prepare=with_webhooks(secret_file)) as run:
        config = run.farm.exporter_config(interval_seconds=interval, timeout_seconds=2.0)
        config["webhooks"] = {"secret_file": str(secret_file)}
        replica = Exporter(settings_from_mapping(config), ListenAddress(LOOPBACK, 0), max_rendering_age=0)
        await replica.start()
        try:
            other = f"http://{LOOPBACK}:{replica.port}"
            # Each replica its own webhook; the second one's deliveries arrive later.
            run.farm.add_webhook(WebhookTarget(run.url + "/webhooks/bitbucket", SECRET))
            run.farm.add_webhook(WebhookTarget(other + "/webhooks/bitbucket", SECRET, delay_seconds=delay))
            await run.wait_ready()
            await run.control("/sim/push", {"repository_ids": [3]})
            repo = run.farm.farm.repositories[3]
            gate = f"/api/v1/repositories/{repo.project.key}/{repo.slug}/mirrors?commit={repo.commit(2)}"
            disagreeing_since: dict[str, float] = {}
            longest = 0.0
            started = time.monotonic()
            async with aiohttp.ClientSession() as http:
                while time.monotonic() - started < 8:
                    answers = []
                    for base in (run.url, other):
                        async with http.get(base + gate) as resp:
                            answers.append({m["mirror"]: m["on_mirror"] for m in (await resp.json())["mirrors"]})
                    now = time.monotonic()
                    for mirror in answers[0]:
                        if answers[0][mirror] != answers[1][mirror]:
                            since = disagreeing_since.setdefault(mirror, now)
                            longest = max(longest, now - since)
                        else:
                            disagreeing_since.pop(mirror, None)
                    await asyncio.sleep(0.05)
            assert all(answers[0].values()) and answers[0] == answers[1], answers  # both said yes in the end
            assert longest <= interval + delay + 0.3, f"the replicas disagreed for {longest:.2f} s"
        finally:
            await replica.stop()
