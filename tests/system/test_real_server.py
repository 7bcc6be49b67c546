"""Where real Bitbucket differs from what a simulator would guess (the fact sheet's section 8): credentials
on ``/status``, the CAPTCHA lock, redirects to the login page, and farmNodes' cluster port. The simulator behaves as
the real server does by default, so every other test is held to the same behaviour."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr
from yarl import URL

from exporter.config import Credentials, PollConfig
from exporter.rest.client import BitbucketClient
from exporter.simulator import Scenario
from exporter.simulator.runner import SimulatedFarm
from exporter.sources import CAPTCHA, LOGIN_PAGE, FetchError
from tests.conftest import running_farm, value

SCENARIO = Scenario(repositories=6, mirrors=2, nodes=2)
TOKEN, PASSWORD = SCENARIO.token, SCENARIO.password


def bearer(farm: SimulatedFarm, config: dict[str, Any]) -> None:
    config["primary"] = {"url": farm.primary_url, "token": TOKEN}


def token_as_basic_password(farm: SimulatedFarm, config: dict[str, Any]) -> None:
    config["primary"] = {"url": farm.primary_url, "username": SCENARIO.username, "password": TOKEN}


def password(farm: SimulatedFarm, config: dict[str, Any]) -> None:
    pass  # the default: Basic with the password


@pytest.mark.parametrize("login", [bearer, token_as_basic_password, password], ids=lambda f: f.__name__)
async def test_a_farm_polled_for_many_cycles_with_any_login_never_gets_credentials_on_status(
    login: Callable[[SimulatedFarm, dict[str, Any]], None],
) -> None:
    # 60 cycles: five minutes at the default 5 s interval. Farm URLs and every node's own URL, /status at each.
    async with running_farm(SCENARIO, ["9.x", "8.x"], interval=0.1, nodes=True, prepare=login) as run:
        await run.wait_ready()
        await run.next_cycles(60, within=60)
        accounts = await get_json(run.http, run.farm.primary_url + "/sim/accounts")
        assert accounts["credentials_outside_rest"] == {}
        assert accounts["denied"] == {} and accounts["locked"] is False
        samples = await run.metrics()
        for mirror in ("sydney", "frankfurt"):
            assert value(samples, "bitbucket_mirror_up", mirror=mirror) == 1.0
            for node in (f"{mirror}-node-1", f"{mirror}-node-2"):
                assert value(samples, "bitbucket_mirror_node_up", mirror=mirror, node=node) == 1.0
            assert value(samples, "bitbucket_mirror_drift_fresh", mirror=mirror) == 1.0
        # /status was asked every cycle at each farm URL and node, and the REST API took the same login.
        truth = await run.truth()
        for mirror in truth["mirrors"].values():
            assert mirror["requests"]["status"] >= 60
            assert all(node["requests"]["status"] >= 60 for node in mirror["per_node"].values())


async def test_the_simulator_refuses_a_token_on_status_and_locks_the_account_after_five_401s() -> None:
    async with SimulatedFarm(Scenario(repositories=2, mirrors=1, nodes=1)) as farm, aiohttp.ClientSession() as http:
        status = farm.mirror_urls["sydney"] + "/status"
        listing = farm.mirror_urls["sydney"] + "/rest/mirroring/latest/supportInfo/repoSyncStatus"
        async with http.get(status, headers={"Authorization": f"Bearer {TOKEN}"}, allow_redirects=False) as resp:
            assert resp.status == 302 and URL(resp.headers["Location"]).path == "/login"
        token_basic = basic(SCENARIO.username, TOKEN)
        for _ in range(4):
            async with http.get(status, headers={"Authorization": token_basic}) as resp:
                assert resp.status == 401
        # The token works where tokens belong (and a success starts the count again).
        async with http.get(listing, headers={"Authorization": token_basic}) as resp:
            assert resp.status == 200
        for _ in range(5):
            async with http.get(status, headers={"Authorization": token_basic}) as resp:
                assert resp.status == 401
        # Locked: every request of the account fails, the right password and the REST API too, until cleared.
        async with http.get(listing, headers={"Authorization": basic(SCENARIO.username, PASSWORD)}) as resp:
            assert resp.status == 401
            assert resp.headers["X-Authentication-Denied-Reason"].startswith("CAPTCHA_CHALLENGE; login-url=")
        async with http.get(status) as resp:
            assert resp.status == 200  # anonymous: no account to lock
        accounts = await get_json(http, farm.primary_url + "/sim/accounts")
        assert accounts["locked"] is True and accounts["credentials_outside_rest"] == {"sydney": 10}
        async with http.post(farm.primary_url + "/sim/accounts", json={"clear_captcha": True}) as resp:
            assert (await resp.json())["locked"] is False
        async with http.get(listing, headers={"Authorization": basic(SCENARIO.username, PASSWORD)}) as resp:
            assert resp.status == 200


async def test_a_redirect_to_the_login_page_is_login_page_never_followed_and_a_lock_is_captcha() -> None:
    async with (
        SimulatedFarm(Scenario(repositories=2, mirrors=1, nodes=1)) as farm,
        aiohttp.ClientSession() as session,
    ):
        client = BitbucketClient(session, PollConfig(timeout_seconds=2.0, backoff_seconds=0.01))
        token = Credentials(token=SecretStr(TOKEN))
        with pytest.raises(FetchError) as refused:
            await client.get_json(URL(farm.mirror_urls["sydney"] + "/status"), token)
        assert refused.value.reason == LOGIN_PAGE and TOKEN not in str(refused.value)
        assert not any("login" in route for route in farm.farm.mirrors["sydney"].requests)  # never followed
        wrong = Credentials(username="admin", password=SecretStr("not-the-password"))
        listing = URL(farm.primary_url + "/rest/mirroring/latest/repos")
        reasons = []
        for _ in range(6):
            with pytest.raises(FetchError) as failed:
                await client.get_json(listing, wrong)
            reasons.append(failed.value.reason)
        assert reasons == ["http_401"] * 5 + [CAPTCHA]


async def test_farm_nodes_list_the_cluster_port_and_each_node_is_reached_at_its_address_and_the_http_port() -> None:
    async with SimulatedFarm(Scenario(repositories=2, mirrors=1, nodes=3)) as farm, aiohttp.ClientSession() as http:
        auth = {"Authorization": basic(SCENARIO.username, PASSWORD)}
        nodes = await get_json(http, farm.mirror_urls["sydney"] + "/rest/mirroring/latest/farmNodes", auth)
        assert {node["address"]["port"] for node in nodes} == {5701}
        addresses = [node["address"]["address"] for node in nodes]
        assert len(set(addresses)) == 3
        for node in nodes:
            url = farm.node_url_template().format(address=node["address"]["address"])
            assert url == farm.node_urls["sydney"][node["name"]]
            assert (await get_json(http, url + "/status"))["state"] == "SYNCHRONIZED"


def basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


async def get_json(http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> Any:
    async with http.get(url, headers=headers or {}, timeout=aiohttp.ClientTimeout(total=10)) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()
