"""The configuration through the real command line: one line and exit code 2 for every kind of bad input,
warnings logged once at start, and check-config for pipelines."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from exporter.app import load_settings
from tests.unit.test_config import FIXTURES, INVALID, expected_key


@pytest.mark.parametrize("path", INVALID[:4] + [p for p in INVALID if "credentials" in p.stem], ids=lambda p: p.stem)
def test_the_cli_prints_one_line_and_exits_2(path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BITBUCKET_MIRROR_EXPORTER_")}
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--config", str(path), "--web.listen-address", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"config error: {expected_key(path)}:" in lines[0]
    assert "s3cret" not in result.stderr + result.stdout


def _cli(args: list[str], env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BITBUCKET_MIRROR_EXPORTER_")}
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args, "--web.listen-address", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**env, **env_extra},
    )


@pytest.mark.parametrize(
    ("variable", "text"),
    [
        ("BITBUCKET_MIRROR_EXPORTER_MIRRORS", "[{name: sydney, password: s3cret}]"),  # YAML, not JSON
        ("BITBUCKET_MIRROR_EXPORTER_POLL", "{interval_seconds: 5"),
    ],
)
def test_a_broken_environment_value_is_one_line_and_exit_2(tmp_path: Path, variable: str, text: str) -> None:
    config = tmp_path / "c.yml"
    config.write_text("primary: {url: https://bitbucket.example.com}\n")
    result = _cli(["--config", str(config)], {variable: text})
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"bitbucket-mirror-exporter: config error: {variable}: cannot parse the environment value "
        "(lists and mappings take JSON)"
    ]
    assert "s3cret" not in result.stderr


def test_warnings_for_a_token_on_a_mirror_and_a_timeout_longer_than_the_interval(tmp_path: Path) -> None:
    config = tmp_path / "c.yml"
    config.write_text(
        # Closed loopback ports: the process runs, its polls fail at once and nothing leaves the machine.
        "primary: {url: http://127.0.0.1:9, username: admin, password: s3cret}\n"
        "mirrors:\n"
        "  - {name: sydney, url: http://127.0.0.1:19, token: t0ken-s3cret}\n"
        "  - {name: frankfurt, url: http://127.0.0.1:29}\n"
        "poll: {interval_seconds: 5, timeout_seconds: 10}\n"
    )
    warnings = load_settings(config).warnings()
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("poll.timeout_seconds (10) is longer than poll.interval_seconds (5)")
    assert warnings[1].startswith("mirrors[0] (sydney): a token cannot read supportInfo")
    # Logged once at start by the real process, which then runs (and is stopped here).
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--config", str(config), "--web.listen-address", "127.0.0.1:0"],
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("BITBUCKET_MIRROR_EXPORTER_")},
    )
    # Bounded: the process is killed if it never says it started.
    watchdog = threading.Timer(20, process.kill)
    watchdog.start()
    try:
        assert process.stderr is not None
        lines = []
        for line in process.stderr:
            lines.append(line)
            if "exporter started" in line:
                break
    finally:
        watchdog.cancel()
        process.terminate()
        process.wait(timeout=10)
    logged = [line for line in lines if "config warning" in line]
    assert len(logged) == 2 and "level=warn" in logged[0]
    assert not any("s3cret" in line for line in lines)


@pytest.mark.parametrize("path", [FIXTURES / "valid" / "full.yml", *INVALID[:3]], ids=lambda p: p.stem)
def test_check_config_exits_0_for_a_valid_file_and_2_naming_the_key_otherwise(path: Path) -> None:
    result = _cli(["check-config", "--config", str(path)], {})
    if path.parent.name == "valid":
        assert result.returncode == 0 and "config OK: primary https://bitbucket.example.com/context" in result.stdout
    else:
        assert result.returncode == 2
        assert f"config error: {expected_key(path)}:" in result.stderr


def test_check_config_names_the_runbook_base_and_warns_when_a_phone_cannot_reach_it() -> None:
    valid = str(FIXTURES / "valid" / "full.yml")
    local = _cli(["check-config", "--config", valid], {})  # it listens on 127.0.0.1 here: a loopback default
    assert local.returncode == 0
    assert "link to runbooks at http://127.0.0.1:0/runbooks" in local.stdout
    assert "loopback address" in local.stderr
    reachable = _cli(["check-config", "--config", valid, "--web.external-url", "https://bme.example.com/"], {})
    assert reachable.returncode == 0 and "loopback" not in reachable.stderr
    assert "link to runbooks at https://bme.example.com/runbooks" in reachable.stdout
    secret = _cli(["check-config", "--config", valid, "--web.external-url", "https://bme:s3cret@bme.example.com"], {})
    assert secret.returncode == 2 and "--web.external-url" in secret.stderr and "s3cret" not in secret.stderr


def _rules(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", "rules", *args], capture_output=True, text=True, timeout=30
    )


def test_rules_take_the_runbook_base_from_the_external_url_and_warn_on_loopback() -> None:
    default = _rules()
    assert default.returncode == 0 and "runbook_url: http://localhost:9879/runbooks#" in default.stdout
    assert "runbook_url http://localhost:9879/runbooks is a loopback address" in default.stderr
    assert "grafana_url http://localhost:3000 is a loopback address" in default.stderr
    external = _rules(
        "--web.external-url", "https://bme.example.com", "--set", "grafana_url=https://grafana.example.com"
    )
    assert external.returncode == 0 and external.stderr == ""
    assert "dashboard_url: https://grafana.example.com/d/bbmirror-overview?viewPanel=" in external.stdout
    assert "runbook_url: https://bme.example.com/runbooks#bitbucketmirrordown" in external.stdout
    assert "localhost" not in external.stdout
    chosen = _rules("--web.external-url", "https://bme.example.com", "--set", "runbook_url=https://wiki.example.com/b")
    assert "runbook_url: https://wiki.example.com/b#bitbucketmirrordown" in chosen.stdout


def test_rules_print_the_slos_for_sloth_and_pyrra(tmp_path: Path) -> None:
    import yaml

    for tool, kind in (("sloth", "prometheus/v1"), ("pyrra", "ServiceLevelObjective")):
        out = tmp_path / f"{tool}.yml"
        result = _rules("--format", tool, "--web.external-url", "https://bme.example.com", "--output", str(out))
        assert result.returncode == 0, result.stderr
        documents = list(yaml.safe_load_all(out.read_text()))
        assert kind in (documents[0].get("version"), documents[0].get("kind"))
        # Sloth's alerts carry annotations, the runbook links among them; pyrra's CRD has no place for any.
        runbook = "https://bme.example.com/runbooks#bitbucketmirrorfreshnessbudgetburn"
        assert (runbook in out.read_text()) == (tool == "sloth")
