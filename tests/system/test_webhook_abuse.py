"""The webhook receiver under abuse, over real HTTP: forged, replayed, oversized, truncated and wrong-type deliveries
are refused or ignored, counted, and never observed twice."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from exporter.simulator import Scenario, SimulatedFarm
from tests.conftest import Running, Samples, running_farm, value

SECRET = "abuse-s3cret"
PATH = "/webhooks/bitbucket"
REQUESTS = "bitbucket_mirror_webhook_requests_total"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "webhooks"


def bitbucket_date(at: float) -> str:
    """As Bitbucket dates its events: whole seconds, an offset without a colon."""
    return time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(at))


# Events are dated as they happen: the receiver refuses dates more than a day from its clock.
NOW = int(time.time())


def push(repo_id: int, to_hash: str, date: str = bitbucket_date(NOW)) -> dict[str, Any]:
    change = {"ref": {"id": "refs/heads/main"}, "refId": "refs/heads/main", "fromHash": "0" * 40, "toHash": to_hash}
    return {"eventKey": "repo:refs_changed", "date": date, "repository": {"id": repo_id, "slug": "repo-1",
            "project": {"key": "PRJ1"}}, "changes": [{**change, "type": "UPDATE"}]}  # fmt: skip


def synced(repo_id: int, to_hash: str, date: str) -> dict[str, Any]:
    body = push(repo_id, to_hash, date)
    return {**body, "eventKey": "mirror:repo_synchronized", "mirrorServer": {"id": "MIRROR-0001", "name": "x"},
            "syncType": "INCREMENTAL", "refLimitExceeded": False}  # fmt: skip


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def post(
    run: Running, event: str, body: bytes, signature: str | None = None, request_id: str | None = None
) -> int:
    headers = {"X-Event-Key": event, "Content-Type": "application/json"}
    if signature is not None:
        headers["X-Hub-Signature"] = signature
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    async with aiohttp.ClientSession() as http, http.post(run.url + PATH, data=body, headers=headers) as resp:
        return resp.status


def prepared(secret_file: Path, max_body_bytes: int = 4096) -> Any:
    def prepare(farm: SimulatedFarm, config: dict[str, Any]) -> None:
        config["webhooks"] = {"secret_file": str(secret_file), "max_body_bytes": max_body_bytes}

    return prepare


async def test_forged_replayed_oversized_truncated_and_wrong_type_deliveries(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    async with running_farm(Scenario(repositories=2, mirrors=1), ["9.x"], prepare=prepared(secret_file)) as run:
        await run.wait_ready()
        body = json.dumps(push(1, "a" * 40)).encode()
        assert await post(run, "repo:refs_changed", body) == 401  # unsigned
        assert await post(run, "repo:refs_changed", body, sign(body, "guessed")) == 401  # forged
        assert await post(run, "repo:refs_changed", body, sign(body + b" ")) == 401  # signed for another body
        assert await post(run, "repo:refs_changed", body, sign(body), "delivery-1") == 200
        late = json.dumps(synced(1, "a" * 40, bitbucket_date(NOW + 7))).encode()
        assert await post(run, "mirror:repo_synchronized", late, sign(late), "delivery-2") == 200
        # The same delivery again (Bitbucket retries, or someone replays it): taken, not observed twice.
        assert await post(run, "mirror:repo_synchronized", late, sign(late), "delivery-2") == 200
        big = b'{"padding": "' + b"x" * 5000 + b'"}'
        assert await post(run, "repo:refs_changed", big, sign(big)) == 413
        cut = body[: len(body) // 2]
        assert await post(run, "repo:refs_changed", cut, sign(cut)) == 400
        listed = json.dumps([push(1, "b" * 40)]).encode()
        assert await post(run, "repo:refs_changed", listed, sign(listed)) == 400
        no_id = json.dumps({**push(1, "c" * 40), "repository": {"slug": "x"}}).encode()
        assert await post(run, "repo:refs_changed", no_id, sign(no_id)) == 400
        other = b"{}"
        assert await post(run, "pr:opened", other, sign(other)) == 202
        ping = b"{}"
        assert await post(run, "diagnostics:ping", ping, sign(ping)) == 200
        run.settle()  # every delivery is answered: the next rendering counts them
        samples: Samples = await run.metrics()
        latency = "bitbucket_mirror_push_to_sync_seconds"
        # MIRROR-0001 is sydney's server id on the primary: the event is labelled with the configured mirror's name.
        assert value(samples, latency + "_count", mirror="sydney", sync="incremental") == 1.0
        assert value(samples, latency + "_sum", mirror="sydney", sync="incremental") == 7.0
        counted = {
            ("repo:refs_changed", "bad_signature"): 3.0,
            ("repo:refs_changed", "accepted"): 1.0,
            ("mirror:repo_synchronized", "accepted"): 1.0,
            ("mirror:repo_synchronized", "replayed"): 1.0,
            ("repo:refs_changed", "too_large"): 1.0,
            ("repo:refs_changed", "malformed"): 3.0,
            ("other", "unknown_event"): 1.0,
            ("diagnostics:ping", "accepted"): 1.0,
        }
        for (event, outcome), count in counted.items():
            assert value(samples, REQUESTS, event=event, outcome=outcome) == count, (event, outcome)
        # No secret in anything the exporter serves.
        assert SECRET not in (await run.get("/metrics"))[1] + (await run.get("/"))[1]


async def test_without_a_secret_the_endpoint_is_off() -> None:
    async with running_farm(Scenario(repositories=2, mirrors=1), ["9.x"]) as run:
        await run.wait_ready()
        body = json.dumps(push(1, "a" * 40)).encode()
        assert await post(run, "repo:refs_changed", body) == 404
        run.settle()
        assert value(await run.metrics(), REQUESTS, event="repo:refs_changed", outcome="accepted") is None


async def test_documented_payloads_posted_by_a_real_client_are_timed(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    async with running_farm(Scenario(repositories=2, mirrors=1), ["9.x"], prepare=prepared(secret_file)) as run:
        await run.wait_ready()
        for event, name in (
            ("repo:refs_changed", "repo_refs_changed"),
            ("mirror:repo_synchronized", "mirror_repo_synchronized"),
        ):
            # The documented payloads as sent, but dated today (2019's dates are more than a day old), 7 s apart.
            documented = (FIXTURES / f"{name}.json").read_text()
            body = (
                documented.replace("2019-03-01T10:37:14+0100", bitbucket_date(NOW))
                .replace("2019-03-01T10:37:21+0100", bitbucket_date(NOW + 7))
                .encode()
            )
            assert await post(run, event, body, sign(body), f"{name}-1") == 200
        # The documented mirror server is not one the primary lists: labelled with the name the event carries.
        latency = "bitbucket_mirror_push_to_sync_seconds"
        samples = await run.metrics_until(
            lambda s: value(s, latency + "_count", mirror="Mirror", sync="incremental") is not None,
            "the sync observed (/metrics shows the state as of at most a second ago)",
        )
        assert value(samples, latency + "_count", mirror="Mirror", sync="incremental") == 1.0
        assert value(samples, latency + "_sum", mirror="Mirror", sync="incremental") == 7.0
        status, answer = await run.get(
            "/api/v1/repositories/PROJ/repository/mirrors?commit=178864a7d521b6f5e720b386b2c2b0ef8563e0dc"
        )
        assert status == 200 and json.loads(answer)["repository"]["id"] == "84"
