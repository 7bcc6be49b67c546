"""Configuration loading: valid files, environment overrides, and one clear error per invalid file."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.app import load_settings
from exporter.config import ConfigError

FIXTURES = Path(__file__).parent.parent / "fixtures" / "config"
INVALID = sorted((FIXTURES / "invalid").glob("*.yml"))
REPO = Path(__file__).parent.parent.parent


def expected_key(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# error: "), f"{path.name} must start with '# error: KEY'"
    return first.removeprefix("# error: ")


def test_full_example_loads_with_its_defaults() -> None:
    settings = load_settings(FIXTURES / "valid" / "full.yml")
    assert settings.primary.url == "https://bitbucket.example.com/context"
    assert settings.primary.password is not None and settings.primary.password.get_secret_value() == "secret"
    sydney, tokyo, frankfurt, toronto = settings.mirrors
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
    assert sydney.nodes is None
    assert frankfurt.nodes is not None and frankfurt.nodes.url_template is not None
    assert frankfurt.jmx is not None and frankfurt.jmx.from_exporter and frankfurt.jmx.port is None
    assert toronto.nodes is not None and [node.name for node in toronto.nodes.static] == ["yyz-1", "yyz-2"]
    # A node without credentials of its own uses the mirror's (here the primary's).
    yyz1, yyz2 = toronto.nodes.static
    assert yyz1.credentials_or(toronto.credentials_or(settings.primary)) is settings.primary
    assert yyz2.credentials_or(settings.primary).username == "node-admin"


def test_the_readme_example_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    password = tmp_path / "password"
    password.write_text("pw")
    monkeypatch.setenv("BITBUCKET_MIRROR_EXPORTER_PRIMARY__PASSWORD_FILE", str(password))
    settings = load_settings(REPO / "examples" / "config.yml")
    assert [m.name for m in settings.mirrors] == ["sydney", "frankfurt"]


def test_secrets_are_not_printed_in_repr() -> None:
    settings = load_settings(FIXTURES / "valid" / "full.yml")
    assert "secret" not in repr(settings).replace("SecretStr", "").replace("secret_file=", "")
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


def test_no_warnings_for_a_plain_config() -> None:
    assert load_settings(FIXTURES / "valid" / "minimal.yml").warnings() == []


def test_a_secret_file_emptied_after_start_is_a_credentials_error_not_an_empty_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from exporter import secret_files

    monkeypatch.setattr(secret_files, "RECHECK_SECONDS", 0.0)  # in production the file is looked at once a second
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


def test_port_in_a_node_url_template_is_warned_about_since_farm_nodes_gives_the_cluster_port(tmp_path: Path) -> None:
    config = tmp_path / "c.yml"
    config.write_text(
        "primary: {url: https://b.example.com}\n"
        "mirrors:\n"
        "  - {name: syd, url: https://syd.example.com, nodes: {url_template: 'http://{address}:{port}'},\n"
        "     jmx: {mesh_exporter_url_template: 'http://{address}:{port}/metrics'}}\n"
        "  - {name: fra, url: https://fra.example.com, nodes: {url_template: 'http://{address}:7990'},\n"
        "     jmx: {exporter_url_template: 'http://{address}:9999/metrics'}}\n"
    )
    warnings = load_settings(config).warnings()
    assert [w.split(" ", 1)[0] for w in warnings] == [
        "mirrors[0].nodes.url_template",
        "mirrors[0].jmx.mesh_exporter_url_template",
    ]
    assert all("cluster (Hazelcast) port" in w for w in warnings)
