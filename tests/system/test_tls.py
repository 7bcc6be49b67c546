"""TLS to Bitbucket: the simulated farm served over HTTPS with a certificate from a throwaway CA, on loopback."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

import pytest

from exporter.app import settings_from_mapping
from exporter.config import ConfigError
from exporter.simulator import Scenario, SimulatedFarm
from exporter.tls import server_context
from tests.certs import TestAuthority
from tests.conftest import Running, running_farm, value, wait_until


def _with_tls(tls: dict[str, Any]) -> Any:
    def prepare(farm: SimulatedFarm, config: dict[str, Any]) -> None:
        config["tls"] = tls

    return prepare


async def _reason_of(run: Running, mirror: str) -> str | None:
    state = next(m for m in run.exporter.state.mirrors if m.name == mirror)
    return state.status.error_reason if state.status.polled else None


async def test_verification_is_on_by_default_and_says_what_to_do(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = TestAuthority(tmp_path)
    pair = ca.issue("bitbucket")
    caplog.set_level(logging.WARNING, "exporter")
    async with running_farm(Scenario(repositories=3), ["9.x"], farm_tls=server_context(pair.cert, pair.key)) as run:
        assert run.farm.primary_url.startswith("https://")
        await run.wait_ready()
        labels = {"target": "sydney", "source": "status", "reason": "tls"}
        samples = await run.metrics_until(
            lambda s: value(s, "bitbucket_mirror_exporter_poll_errors_total", **labels) is not None, "a TLS error"
        )
        assert value(samples, "bitbucket_mirror_up", mirror="sydney") == 0.0
        errors = value(samples, "bitbucket_mirror_exporter_poll_errors_total", **labels)
        assert errors is not None and errors >= 1.0  # one per poll: another may have ended meanwhile
        details = [getattr(r, "detail", "") for r in caplog.records if getattr(r, "reason", None) == "tls"]
        assert details and all("certificate not trusted" in d and "tls.ca_file" in d for d in details), details


async def test_a_custom_ca_bundle_is_trusted(tmp_path: Path) -> None:
    ca = TestAuthority(tmp_path)
    pair = ca.issue("bitbucket")
    context = server_context(pair.cert, pair.key)
    async with running_farm(
        Scenario(repositories=3), ["9.x"], farm_tls=context, prepare=_with_tls({"ca_file": str(ca.ca_file)})
    ) as run:
        await run.wait_ready()
        samples = await run.metrics()
        assert value(samples, "bitbucket_mirror_up", mirror="sydney") == 1.0
        assert value(samples, "bitbucket_mirror_repositories", mirror="sydney") == 3


async def test_a_ca_that_did_not_sign_the_server_is_not_trusted(tmp_path: Path) -> None:
    pair = TestAuthority(tmp_path).issue("bitbucket")
    (tmp_path / "other").mkdir()
    other = TestAuthority(tmp_path / "other", "Other CA")
    async with running_farm(
        Scenario(repositories=3),
        ["9.x"],
        farm_tls=server_context(pair.cert, pair.key),
        prepare=_with_tls({"ca_file": str(other.ca_file)}),
    ) as run:
        await run.wait_ready()
        assert await _reason_of(run, "sydney") == "tls"


async def test_a_client_certificate_is_sent_when_configured(tmp_path: Path) -> None:
    ca = TestAuthority(tmp_path)
    server = ca.issue("bitbucket")
    client = ca.issue("exporter", server=False)
    # The server (a proxy in front of Bitbucket, say) insists on a client certificate from this CA.
    context = server_context(server.cert, server.key, client_ca_file=ca.ca_file)
    without = {"ca_file": str(ca.ca_file)}
    async with running_farm(Scenario(repositories=3), ["9.x"], farm_tls=context, prepare=_with_tls(without)) as run:
        await run.wait_ready()
        # Under TLS 1.3 the server's refusal arrives after the handshake: the client sees the connection closed.
        assert await _reason_of(run, "sydney") in ("tls", "connection")
    with_cert = {**without, "cert_file": str(client.cert), "key_file": str(client.key)}
    async with running_farm(Scenario(repositories=3), ["9.x"], farm_tls=context, prepare=_with_tls(with_cert)) as run:

        async def up() -> bool:
            return value(await run.metrics(), "bitbucket_mirror_up", mirror="sydney") == 1.0

        await wait_until(up, what="sydney up over mutual TLS")


def _config(tls: dict[str, Any]) -> dict[str, Any]:
    return {"primary": {"url": "https://bitbucket.example.com", "token": "t"}, "tls": tls}


def test_tls_config_problems_name_the_key(tmp_path: Path) -> None:
    ca = TestAuthority(tmp_path)
    client = ca.issue("exporter", server=False)
    other = ca.issue("other", server=False)
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    cases = {
        "tls.ca_file: cannot read": {"ca_file": str(tmp_path / "missing.pem")},
        "tls: key_file needs cert_file": {"key_file": str(client.key)},
        "tls: cannot load the certificate and key": {
            "cert_file": str(client.cert),
            "key_file": str(other.key),
        },
        "tls: cannot load ca_file": {"ca_file": str(not_pem)},
    }
    for expected, tls in cases.items():
        with pytest.raises(ConfigError) as raised:
            settings_from_mapping(_config(tls))
        assert str(raised.value).startswith(expected), str(raised.value)
    settings = settings_from_mapping(_config({"cert_file": str(client.cert), "key_file": str(client.key)}))
    assert isinstance(settings.tls.context(), ssl.SSLContext)
