"""The optional web config: /metrics over TLS with bcrypt basic auth, health endpoints open; real clients (aiohttp
and Prometheus itself) on loopback."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import math
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
import yaml

from exporter.app import Settings
from exporter.config import ConfigError
from exporter.simulator import Scenario
from exporter.web.config import WebConfig, load_web_config
from tests.certs import TestAuthority
from tests.conftest import LOOPBACK, parse_metrics, running_farm, value, wait_until
from tests.monitoring_stack import prometheus

USER, PASSWORD = "prometheus", "scrape-Pa55-3e9d"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _hash(password: str) -> str:
    # Cost 4 keeps the tests quick; production hashes use 10 to 12.
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def _web_config(tmp_path: Path, tls: bool = True) -> tuple[WebConfig, TestAuthority]:
    ca = TestAuthority(tmp_path)
    pair = ca.issue("exporter")
    document: dict[str, Any] = {"basic_auth_users": {USER: _hash(PASSWORD), "other": _hash("other-password")}}
    if tls:
        document["tls_server_config"] = {"cert_file": str(pair.cert), "key_file": str(pair.key)}
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump(document))
    return load_web_config(path), ca


async def test_pages_need_basic_auth_over_tls_and_health_endpoints_stay_open(tmp_path: Path) -> None:
    web_config, ca = _web_config(tmp_path)
    trust = ssl.create_default_context(cafile=str(ca.ca_file))
    async with (
        running_farm(Scenario(repositories=3), ["9.x"], web_config=web_config) as run,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as client,
    ):
        base = f"https://{LOOPBACK}:{run.exporter.port}"
        timeout = aiohttp.ClientTimeout(total=10)

        async def status(path: str, auth: dict[str, str] | None = None, method: str = "GET") -> int:
            async with client.request(method, base + path, headers=auth, timeout=timeout) as resp:
                if resp.status == 401:
                    assert resp.headers["WWW-Authenticate"].startswith('Basic realm="bitbucket-mirror-exporter"')
                return resp.status

        assert await status("/api/v1/behind") == 401
        assert await status("/api/v1/behind", basic(USER, PASSWORD)) == 200
        for path in ("/metrics", "/"):
            assert await status(path) == 401
            assert await status(path, basic(USER, "wrong")) == 401
            assert await status(path, basic("nobody", PASSWORD)) == 401
            assert await status(path, basic(USER, PASSWORD)) == 200
            assert await status(path, basic("other", "other-password")) == 200
            assert await status(path, basic(USER, "x" * 100)) == 401  # bcrypt refuses over 72 bytes: a no, not a 500
        assert await status("/-/reload", method="POST") == 401
        assert await status("/-/healthy") == 200

        async def ready() -> bool:
            return await status("/-/ready") == 200

        await wait_until(ready, what="/-/ready without credentials")
        async with client.get(base + "/metrics", headers=basic(USER, PASSWORD), timeout=timeout) as resp:
            samples = parse_metrics(await resp.text())
        assert value(samples, "bitbucket_mirror_up", mirror="sydney") == 1.0
        # Plain HTTP on the TLS port gets nothing.
        with pytest.raises(aiohttp.ClientError):
            async with run.http.get(f"http://{LOOPBACK}:{run.exporter.port}/-/healthy", timeout=timeout) as resp:
                await resp.read()
                assert resp.status != 200
                raise aiohttp.ClientError("answered with an error")


async def test_basic_auth_without_tls(tmp_path: Path) -> None:
    web_config, _ = _web_config(tmp_path, tls=False)
    async with running_farm(Scenario(repositories=3), ["9.x"], web_config=web_config) as run:
        assert (await run.get("/metrics"))[0] == 401
        assert (await run.get("/-/healthy"))[0] == 200
        async with run.http.get(run.url + "/metrics", headers=basic(USER, PASSWORD)) as resp:
            assert resp.status == 200


async def test_prometheus_scrapes_over_tls_with_basic_auth(tmp_path: Path) -> None:
    web_config, ca = _web_config(tmp_path)
    scrape = {
        "scheme": "https",
        "tls_config": {"ca_file": str(ca.ca_file)},
        "basic_auth": {"username": USER, "password": PASSWORD},
    }
    async with (
        running_farm(Scenario(repositories=3), ["9.x"], web_config=web_config) as run,
        prometheus(tmp_path, run.exporter.port, scrape=scrape) as port,
    ):

        async def scraped() -> bool:
            url = f"http://{LOOPBACK}:{port}/api/v1/query"
            async with run.http.get(url, params={"query": 'bitbucket_mirror_up{mirror="sydney"}'}) as resp:
                result = (await resp.json())["data"]["result"]
            return bool(result) and result[0]["value"][1] == "1"

        await wait_until(scraped, 30, "Prometheus scraping through TLS and basic auth")


def test_web_config_problems_name_the_flag_and_key(tmp_path: Path) -> None:
    ca = TestAuthority(tmp_path)
    pair = ca.issue("exporter")
    cases: dict[str, Any] = {
        "--web.config.file: basic_auth_users: user 'prometheus': not a bcrypt hash": {
            "basic_auth_users": {USER: "plain-text-password"}
        },
        "--web.config.file: tls_server_config.cert_fil: unknown key": {
            "tls_server_config": {"cert_file": str(pair.cert), "cert_fil": "x", "key_file": str(pair.key)}
        },
        "--web.config.file: tls_server_config.cert_file: Field required": {
            "tls_server_config": {"key_file": str(pair.key)}
        },
        "--web.config.file: tls_server_config: cannot read the certificate or key": {
            "tls_server_config": {"cert_file": str(tmp_path / "missing.crt"), "key_file": str(pair.key)}
        },
        "--web.config.file: tls_server_config: client_ca_file and client_auth_type RequireAndVerifyClientCert go": {
            "tls_server_config": {
                "cert_file": str(pair.cert),
                "key_file": str(pair.key),
                "client_auth_type": "RequireAndVerifyClientCert",
            }
        },
        "--web.config.file: tls_server_config: client_ca_file and client_auth_type": {
            "tls_server_config": {
                "cert_file": str(pair.cert),
                "key_file": str(pair.key),
                "client_ca_file": str(ca.ca_file),
            }
        },
        "--web.config.file: users: unknown key": {"users": {}},
    }
    path = tmp_path / "web.yml"
    for expected, document in cases.items():
        path.write_text(yaml.safe_dump(document))
        with pytest.raises(ConfigError) as raised:
            load_web_config(path)
        assert str(raised.value).startswith(expected), str(raised.value)
        assert "plain-text-password" not in str(raised.value)


def test_a_bad_web_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({"primary": {"url": "http://127.0.0.1:9", "token": "t"}}))
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({"basic_auth_users": {USER: "hunter2"}}))
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "run", f"--config={config}", f"--web.config.file={web}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--web.config.file: basic_auth_users" in result.stderr
    assert "hunter2" not in result.stderr


async def test_a_reload_swaps_the_users_and_refuses_a_tls_change(tmp_path: Path) -> None:
    web_config, _ = _web_config(tmp_path, tls=False)
    current: dict[str, Any] = {}

    def loader() -> tuple[Settings, WebConfig]:
        return current["settings"], current["web"]

    async with running_farm(Scenario(repositories=3), ["9.x"], web_config=web_config, loader=loader) as run:
        current["settings"], current["web"] = (
            run.exporter.settings,
            WebConfig(basic_auth_users={"new-user": _hash("new-password")}),
        )
        assert await run.exporter.reload() == (True, "config reloaded")
        async with run.http.get(run.url + "/metrics", headers=basic(USER, PASSWORD)) as resp:
            assert resp.status == 401
        async with run.http.get(run.url + "/metrics", headers=basic("new-user", "new-password")) as resp:
            assert resp.status == 200
        # Turning TLS on needs a new listener: refused, the running web config stays.
        (tmp_path / "tls").mkdir()
        current["web"], _ = _web_config(tmp_path / "tls")
        ok, message = await run.exporter.reload()
        assert not ok and "tls_server_config" in message and "restart" in message
        assert run.exporter.reloads.successful is False
        async with run.http.get(run.url + "/metrics", headers=basic("new-user", "new-password")) as resp:
            assert resp.status == 200


async def test_scrapers_without_a_client_certificate_are_refused_when_required(tmp_path: Path) -> None:
    ca = TestAuthority(tmp_path)
    server, scraper = ca.issue("exporter"), ca.issue("scraper", server=False)
    tls = {"cert_file": str(server.cert), "key_file": str(server.key), "client_ca_file": str(ca.ca_file),
           "client_auth_type": "RequireAndVerifyClientCert"}  # fmt: skip
    web_config = WebConfig.model_validate({"tls_server_config": tls})
    async with running_farm(Scenario(repositories=3), ["9.x"], web_config=web_config) as run:
        url = f"https://{LOOPBACK}:{run.exporter.port}/-/healthy"
        anonymous = ssl.create_default_context(cafile=str(ca.ca_file))
        with pytest.raises(aiohttp.ClientError):
            async with run.http.get(url, ssl=anonymous, timeout=aiohttp.ClientTimeout(total=10)) as resp:
                await resp.read()
        known = ssl.create_default_context(cafile=str(ca.ca_file))
        known.load_cert_chain(str(scraper.cert), str(scraper.key))
        async with run.http.get(url, ssl=known, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            assert resp.status == 200


async def test_webhooks_need_no_basic_auth_but_the_ci_gate_does(tmp_path: Path) -> None:
    web_config, ca = _web_config(tmp_path)
    trust = ssl.create_default_context(cafile=str(ca.ca_file))
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text("hook-secret")

    def prepare(farm: Any, config: dict[str, Any]) -> None:
        config["webhooks"] = {"secret_file": str(secret_file)}

    async with (
        running_farm(Scenario(repositories=3), ["9.x"], web_config=web_config, prepare=prepare) as run,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as client,
    ):
        base = f"https://{LOOPBACK}:{run.exporter.port}"
        body = b"{}"
        signature = "sha256=" + hmac.new(b"hook-secret", body, hashlib.sha256).hexdigest()
        headers = {"X-Event-Key": "diagnostics:ping", "X-Hub-Signature": signature}
        async with client.post(base + "/webhooks/bitbucket", data=body, headers=headers) as resp:
            assert resp.status == 200  # Bitbucket signs; it sends no credentials
        gate = "/api/v1/repositories/PRJ1/repo-1/mirrors?commit=" + "a" * 40
        async with client.get(base + gate) as resp:
            assert resp.status == 401

        async def ready() -> bool:  # run.wait_ready speaks plain HTTP; this exporter speaks TLS only
            return run.exporter.state.ready

        await wait_until(ready, 15, "the first poll")
        async with client.get(base + gate, headers=basic(USER, PASSWORD)) as resp:
            assert resp.status == 200 and (await resp.json())["repository"]["slug"] == "repo-1"


async def test_a_flood_of_wrong_passwords_from_one_address_starves_neither_prometheus_nor_the_polls() -> None:
    # Cost 10 (about 60 ms a check): dear enough that 200 unbounded checks would queue for seconds.
    from exporter.web import auth as auth_module

    cost = 10
    web_config = WebConfig(basic_auth_users={USER: bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(cost)).decode()})
    async with running_farm(Scenario(repositories=3), ["9.x"], web_config=web_config, interval=0.2) as run:
        await run.wait_ready()
        url = f"http://{LOOPBACK}:{run.exporter.port}/metrics"
        attacker = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), limit=0)
        flood_statuses: list[int] = []

        async with aiohttp.ClientSession(connector=attacker) as flood:

            async def wrong(i: int) -> None:
                async with flood.get(url, headers=basic(USER, f"guess-{i}")) as resp:
                    flood_statuses.append(resp.status)

            flood_began = time.monotonic()
            flooding = asyncio.gather(*(wrong(i) for i in range(200)))
            await asyncio.sleep(0.05)
            # Prometheus, from its own address, asks for the first time (nothing remembered) while the flood runs.
            answered: list[int] = []
            async with aiohttp.ClientSession() as prometheus_client:
                for _ in range(40):
                    async with prometheus_client.get(url, headers=basic(USER, PASSWORD)) as resp:
                        answered.append(resp.status)
                        if resp.status == 200:
                            break
                        assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
                    await asyncio.sleep(0.1)
            await flooding
            flood_seconds = time.monotonic() - flood_began
        assert answered[-1] == 200, answered
        # The flood: refused, mostly at once; bcrypt ran for no more than the address's failures before its backoff
        # and the checks the bounded queue held.
        assert set(flood_statuses) <= {401, 429} and flood_statuses.count(429) >= 150
        served = run.exporter._served.auth
        assert served.refused_backoff + served.refused_busy >= 150
        # When the address's count reaches the backoff, up to MAX_WAITING checks may still run and as many may have
        # finished uncounted (their slots freed before their requests resume); and each time the backoff (1 s,
        # doubling) runs out while the flood still arrives, as on a loaded machine, as many again before the next
        # failure renews it. The backoff itself: tests/unit/test_auth_backoff.py.
        expiries = math.floor(math.log2(flood_seconds + 1))
        bound = auth_module.FAILURES_BEFORE_BACKOFF + 2 * auth_module.MAX_WAITING * (1 + expiries)
        assert flood_statuses.count(401) <= bound, (flood_statuses.count(401), flood_seconds)
        # The polls went on meanwhile.
        await run.next_cycles(2)


def test_hashes_are_checked_at_load_and_a_cost_above_14_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    dear = "$2b$15$" + bcrypt.hashpw(b"x", bcrypt.gensalt(4)).decode()[7:]
    path.write_text(yaml.safe_dump({"basic_auth_users": {"prometheus": dear}}))
    with pytest.raises(ConfigError) as refused:
        load_web_config(path)
    assert "basic_auth_users" in str(refused.value) and "cost 15 is above 14" in str(refused.value)
    broken = "$2b$04$" + "!" * 53  # the right length, not a bcrypt hash
    path.write_text(yaml.safe_dump({"basic_auth_users": {"prometheus": broken}}))
    with pytest.raises(ConfigError) as refused:
        load_web_config(path)
    assert "not a bcrypt hash" in str(refused.value) and broken not in str(refused.value)


async def test_an_unknown_user_costs_a_check_of_the_configured_cost_on_the_bcrypt_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    from exporter.web import auth as auth_module

    checks: list[tuple[int, str]] = []
    real = bcrypt.checkpw

    def recorded(password: bytes, hashed: bytes) -> bool:
        checks.append((auth_module.cost_of(hashed), threading.current_thread().name))
        return bool(real(password, hashed))

    monkeypatch.setattr(bcrypt, "checkpw", recorded)
    known = bcrypt.hashpw(b"right", bcrypt.gensalt(6)).decode()
    auth = auth_module.BasicAuth({"prometheus": known})
    assert not (await auth.check(basic("nobody", "x")["Authorization"], "127.0.0.1")).allowed
    assert not (await auth.check(basic("prometheus", "x")["Authorization"], "127.0.0.1")).allowed
    assert [cost for cost, _ in checks] == [6, 6]  # the dummy hash has the configured cost
    assert all(name.startswith("bme-bcrypt") for _, name in checks)  # never the loop's default executor (DNS)
