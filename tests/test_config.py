"""Configuration loading: valid files, environment overrides, and one clear error per invalid file."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from exporter.config import ConfigError, load_settings

FIXTURES = Path(__file__).parent / "fixtures" / "config"
INVALID = sorted((FIXTURES / "invalid").glob("*.yml"))
REPO = Path(__file__).parent.parent


def expected_key(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# error: "), f"{path.name} must start with '# error: KEY'"
    return first.removeprefix("# error: ")


def test_full_example_loads_with_its_defaults() -> None:
    settings = load_settings(FIXTURES / "valid" / "full.yml")
    assert settings.primary.url == "https://bitbucket.example.com/context"
    assert settings.primary.password is not None and settings.primary.password.get_secret_value() == "secret"
    sydney, tokyo = settings.mirrors
    # A mirror without credentials uses the primary's; one with its own keeps them.
    assert sydney.credentials_or(settings.primary) is settings.primary
    assert tokyo.credentials_or(settings.primary) is tokyo
    assert tokyo.url == "https://mirror-tyo.example.com:8443"
    assert settings.poll.interval_seconds == 30 and settings.poll.concurrency_per_host == 4
    assert settings.tls.verify is True and settings.tls.ca_file is None
    assert sydney.jmx is not None and sydney.jmx.port == 3333 and sydney.jmx.interval_seconds == 60
    assert sydney.jmx.object_names == ["com.atlassian.bitbucket*:*"]
    assert tokyo.jmx is not None and tokyo.jmx.interval_seconds == 120
    node1, node2 = tokyo.jmx.nodes
    # A node without credentials of its own uses the jmx block's.
    assert tokyo.jmx.credentials_for(node1).username == "monitor"
    assert tokyo.jmx.credentials_for(node2).username == "other"


def test_the_readme_example_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    password = tmp_path / "password"
    password.write_text("pw")
    monkeypatch.setenv("BITBUCKET_MIRROR_EXPORTER_PRIMARY__PASSWORD_FILE", str(password))
    settings = load_settings(REPO / "examples" / "config.yml")
    assert [m.name for m in settings.mirrors] == ["sydney", "frankfurt"]


def test_secrets_are_not_printed_in_repr() -> None:
    settings = load_settings(FIXTURES / "valid" / "full.yml")
    assert "secret" not in repr(settings).replace("SecretStr", "")
    assert "mirror-token" not in repr(settings)
    assert "jmx-secret" not in repr(settings)


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITBUCKET_MIRROR_EXPORTER_PRIMARY__PASSWORD", "from-env")
    monkeypatch.setenv("BITBUCKET_MIRROR_EXPORTER_POLL__INTERVAL_SECONDS", "12.5")
    monkeypatch.setenv("BITBUCKET_MIRROR_EXPORTER_MIRRORS", '[{"name": "env", "url": "https://env.example.com"}]')
    settings = load_settings(FIXTURES / "valid" / "full.yml")
    assert settings.primary.password is not None and settings.primary.password.get_secret_value() == "from-env"
    assert settings.primary.username == "admin"  # the rest of the primary still comes from the file
    assert settings.poll.interval_seconds == 12.5
    assert [m.name for m in settings.mirrors] == ["env"]


def test_environment_alone_is_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITBUCKET_MIRROR_EXPORTER_PRIMARY__URL", "https://bb.example.com")
    assert load_settings(None).primary.url == "https://bb.example.com"


def test_password_file_is_read(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    config = tmp_path / "c.yml"
    config.write_text(f"primary: {{url: https://b.example.com, username: a, password_file: {secret}}}\n")
    settings = load_settings(config)
    password = settings.primary.resolved_password()
    assert password is not None and password.get_secret_value() == "from-file"


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_each_invalid_file_names_its_key(path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert message.startswith(expected_key(path) + ":"), message
    assert "s3cret" not in message


def test_a_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--config: cannot read"):
        load_settings(tmp_path / "nope.yml")


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


def test_a_bad_environment_number_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITBUCKET_MIRROR_EXPORTER_POLL__INTERVAL_SECONDS", "abc")
    with pytest.raises(ConfigError, match=r"^poll\.interval_seconds: "):
        load_settings(FIXTURES / "valid" / "minimal.yml")


def test_stale_after_defaults_to_three_intervals(tmp_path: Path) -> None:
    config = tmp_path / "c.yml"
    config.write_text("primary: {url: https://bitbucket.example.com}\npoll: {interval_seconds: 20}\n")
    assert load_settings(config).poll.stale_after == 60
    config.write_text("primary: {url: https://b.example.com}\npoll: {interval_seconds: 20, stale_after_seconds: 20}\n")
    assert load_settings(config).poll.stale_after == 20


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


def test_no_warnings_for_a_plain_config() -> None:
    assert load_settings(FIXTURES / "valid" / "minimal.yml").warnings() == []


def test_a_secret_file_emptied_after_start_is_a_credentials_error_not_an_empty_password(tmp_path: Path) -> None:
    from exporter.rest.client import auth_headers
    from exporter.sources import CREDENTIALS, FetchError

    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    config = tmp_path / "c.yml"
    config.write_text(f"primary: {{url: https://b.example.com, username: a, password_file: {secret}}}\n")
    credentials = load_settings(config).primary
    assert auth_headers(credentials)["Authorization"].startswith("Basic ")
    secret.write_text("")  # a Secret rotated badly: the poll fails with its own reason, the file named, no content
    with pytest.raises(FetchError) as caught:
        auth_headers(credentials)
    assert caught.value.reason == CREDENTIALS and str(secret) in caught.value.detail and "empty" in caught.value.detail


@pytest.mark.parametrize("path", [FIXTURES / "valid" / "full.yml", *INVALID[:3]], ids=lambda p: p.stem)
def test_check_config_exits_0_for_a_valid_file_and_2_naming_the_key_otherwise(path: Path) -> None:
    result = _cli(["check-config", "--config", str(path)], {})
    if path.parent.name == "valid":
        assert result.returncode == 0 and "config OK: primary https://bitbucket.example.com/context" in result.stdout
    else:
        assert result.returncode == 2
        assert f"config error: {expected_key(path)}:" in result.stderr
