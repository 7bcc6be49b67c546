"""Configuration: one YAML file, overridable by environment variables.

Environment variables use the prefix ``BITBUCKET_MIRROR_EXPORTER_`` and ``__`` between nested keys, for example
``BITBUCKET_MIRROR_EXPORTER_PRIMARY__PASSWORD``. Lists (``MIRRORS``) take JSON. The environment wins over the file.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

import yaml
from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from exporter.secret_files import UserPassword, read_secret_file, readable_secret_file
from exporter.strict import StrictModel
from exporter.tls import client_context
from exporter.urls import check_base_url, check_node_template

ENV_PREFIX = "BITBUCKET_MIRROR_EXPORTER_"
PRIMARY_TARGET = "primary"


class ConfigError(Exception):
    """A configuration problem, phrased as one line that names the offending key."""


class Credentials(UserPassword):
    """Basic auth (username with password or password_file) or a Bearer token (token or token_file)."""

    token: SecretStr | None = None
    token_file: Path | None = None

    _token_file_readable = field_validator("token_file")(readable_secret_file)

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        has_password = self.password_given()
        if self.token is not None and self.token_file is not None:
            raise ValueError("set token or token_file, not both")
        has_basic = self.username is not None or has_password
        has_token = self.token is not None or self.token_file is not None
        if has_basic and has_token:
            raise ValueError("set username/password or token, not both")
        if has_password and self.username is None:
            raise ValueError("username is required with password")
        return self

    @property
    def is_set(self) -> bool:
        return any(
            v is not None for v in (self.username, self.password, self.password_file, self.token, self.token_file)
        )

    def credentials_or(self, default: Credentials) -> Credentials:
        """These credentials, or ``default`` when none are set (a mirror uses the primary's, a node its mirror's)."""
        return self if self.is_set else default

    def resolved_token(self) -> SecretStr | None:
        if self.token_file is not None:
            return read_secret_file(self.token_file)
        return self.token


class Target(Credentials):
    url: str

    @field_validator("url")
    @classmethod
    def _base_url(cls, url: str) -> str:
        return check_base_url(url)


class PrimaryConfig(Target):
    pass


class StaticNode(Target):
    """One node of a farm by its own base URL; without credentials of its own it uses the mirror's."""

    name: str = Field(min_length=1, max_length=128)


class NodesConfig(StrictModel):
    """How to reach each node of a mirror farm, so every node's own listings are read (they are node-local)."""

    # Built for each farmNodes entry, every cycle, from its {address}, {port}, {id} and {name}.
    url_template: str | None = None
    static: list[StaticNode] = Field(default_factory=list)

    @field_validator("url_template")
    @classmethod
    def _template(cls, template: str | None) -> str | None:
        return None if template is None else check_node_template(template)

    @field_validator("static")
    @classmethod
    def _unique(cls, nodes: list[StaticNode]) -> list[StaticNode]:
        names = [node.name for node in nodes]
        if len(set(names)) != len(names):
            raise ValueError("node names must be unique")
        return nodes

    @model_validator(mode="after")
    def _one_way(self) -> Self:
        if (self.url_template is None) == (not self.static):
            raise ValueError("set url_template or static (a list of {name, url}), one of them")
        return self


class MirrorTarget(Target):
    """What every source knows of a configured mirror: its name, URL, credentials and how its nodes are reached. The
    composition root's ``MirrorConfig`` adds each source's own keys (jmx, verify_refs)."""

    name: str = Field(min_length=1, max_length=128)
    # Each node's own URL, to read its node-local listings; absent: the farm URL only (one node per walk).
    nodes: NodesConfig | None = None

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name == PRIMARY_TARGET:
            raise ValueError(f"'{PRIMARY_TARGET}' is reserved for the primary's target label")
        return name


class PollConfig(StrictModel):
    interval_seconds: float = Field(default=30.0, gt=0, le=86400)
    timeout_seconds: float = Field(default=10.0, gt=0, le=3600)
    # Within timeout_seconds: a host that never accepts the connection (firewall drop, node down) is told apart from
    # a slow answer (reason connect_timeout, not timeout).
    connect_timeout_seconds: float = Field(default=5.0, gt=0, le=3600)
    concurrency_per_host: int = Field(default=4, ge=1, le=256)
    retries: int = Field(default=2, ge=0, le=10)
    backoff_seconds: float = Field(default=0.5, ge=0, le=60)
    max_backoff_seconds: float = Field(default=10.0, ge=0, le=600)
    page_limit: int = Field(default=1000, ge=1, le=100000)
    max_pages: int = Field(default=10000, ge=1)
    # Rows one listing walk may bring: none by default, which means 10 x the primary's repository count, at least
    # 100,000 (a mirror lists no more repositories than the primary has; a runaway answer is refused, not held);
    # until the primary's first listing is read, max_pages x page_limit.
    max_rows: int | None = Field(default=None, ge=1000)
    # One response body; a page of 1000 repositories is well under 1 MiB, so 32 MiB only stops a runaway answer
    # (reason too_large) before it takes the exporter's memory.
    max_response_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    # How long a source's last good values are served while its polls fail; past that they are not served at all
    # (docs/metrics.md, "Freshness"). Default: 3 x interval_seconds, so one or two failed polls do not blank a graph
    # or reset an alert's `for`.
    stale_after_seconds: float | None = Field(default=None, gt=0, le=7 * 86400)

    @field_validator("stale_after_seconds")
    @classmethod
    def _at_least_one_interval(cls, value: float | None, info: ValidationInfo) -> float | None:
        interval = info.data.get("interval_seconds")
        if value is not None and interval is not None and value < interval:
            # Shorter than an interval, every value would vanish between two successful polls.
            raise ValueError(f"must be at least poll.interval_seconds ({interval:g})")
        return value

    @property
    def stale_after(self) -> float:
        return self.stale_after_seconds if self.stale_after_seconds is not None else 3 * self.interval_seconds


class TlsConfig(StrictModel):
    """TLS to Bitbucket: verification on by default, an optional CA bundle and an optional client certificate."""

    verify: bool = True
    ca_file: Path | None = None
    # A client certificate (PEM) for a proxy or Bitbucket that asks for one; key_file when the key is separate.
    cert_file: Path | None = None
    key_file: Path | None = None

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _readable(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"cannot read {path}")
        return path

    @model_validator(mode="after")
    def _loads(self) -> Self:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file")
        # A bad bundle or a key that does not match its certificate fails here, at start-up, not at every poll.
        try:
            self.context()
        except ssl.SSLError as exc:
            raise ValueError(f"cannot load ca_file: {exc.reason or exc.strerror}") from None
        return self

    def context(self) -> ssl.SSLContext | bool:
        return client_context(self.verify, self.ca_file, self.cert_file, self.key_file)


class CoreSettings(BaseSettings):
    """The keys of the core: the primary, polling, TLS towards Bitbucket and the rendering policy. The composition
    root's ``Settings`` adds one section per source."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    primary: PrimaryConfig
    poll: PollConfig = Field(default_factory=PollConfig)
    tls: TlsConfig = Field(default_factory=TlsConfig)
    # Which repositories get per-repository series: all, only drifting/missing/failing ones, or none.
    per_repository_metrics: Literal["all", "unhealthy", "none"] = "unhealthy"
    # 100 per mirror: the dashboards show the worst 50, and prometheus-client renders about 7 µs per sample, so a
    # larger default would make every scrape of a big farm slow (bench/README.md).
    max_repository_series: int = Field(default=100, ge=0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs; the environment must override it.
        return (env_settings, init_settings)

    def warnings(self) -> list[str]:
        """Settings that are valid but probably not what the admin meant; logged once when the config is loaded."""
        found = []
        if self.poll.timeout_seconds > self.poll.interval_seconds:
            found.append(
                f"poll.timeout_seconds ({self.poll.timeout_seconds:g}) is longer than poll.interval_seconds "
                f"({self.poll.interval_seconds:g}): a slow answer delays the next poll and values age past an interval"
            )
        return found


def cluster_port_warning(key: str, mirror: str, template: str | None) -> list[str]:
    """``{port}`` in a node URL template is farmNodes' ``address.port``: the node's cluster (Hazelcast) port, 5701 in
    Atlassian's chart, which speaks no HTTP (reference section 8; docs/assumptions.md)."""
    if template is None or "{port}" not in template:
        return []
    return [
        f"{key} ({mirror}) uses {{port}}, which farmNodes fills with the node's cluster (Hazelcast) port, not its "
        "HTTP port: write the HTTP port instead, e.g. http://{address}:7990"
    ]


_NAMED = re.compile(
    r"^(?P<key>[a-z_][a-z0-9_]*(?:\[\d+\])?(?:\.[a-z_][a-z0-9_]*(?:\[\d+\])?)*): (?P<message>.*)$", re.S
)


def _key(loc: tuple[int | str, ...]) -> str:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key or "(top level)"


def describe_validation_error(exc: ValidationError) -> str:
    # pydantic's own text quotes the input value, which may be a secret: build the line from loc and msg only.
    first = exc.errors(include_input=False, include_url=False)[0]
    more = exc.error_count() - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
    key = _key(tuple(first["loc"]))
    # A model's own check names the key inside it ("remote: ..."): the line then names the whole key.
    named = _NAMED.match(message) if first["type"] == "value_error" else None
    if named is not None:
        key = named["key"] if key == "(top level)" else f"{key}.{named['key']}"
        message = named["message"]
    return f"{key}: {message}{suffix}"


def _env_error(exc: SettingsError) -> str:
    # pydantic-settings says 'error parsing value for field "mirrors" from source "EnvSettingsSource"'; the value
    # itself may hold a password, so only the variable is named.
    match = re.search(r'field "([^"]+)"', str(exc))
    variable = ENV_PREFIX + (match.group(1).upper() if match else "*")
    return f"{variable}: cannot parse the environment value (lists and mappings take JSON)"


SettingsT = TypeVar("SettingsT", bound=CoreSettings)


def settings_from_mapping(model: type[SettingsT], data: dict[str, Any]) -> SettingsT:
    try:
        return model(**data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    except SettingsError as exc:
        raise ConfigError(_env_error(exc)) from None


def _repeated_key(node: yaml.Node | None, path: tuple[int | str, ...] = ()) -> tuple[str, int] | None:
    """The first key repeated within one mapping, with its line. YAML forbids repeated keys but PyYAML keeps the last
    one, so two ``mirrors:`` blocks would silently drop the first."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.start_mark)
            if key in seen:
                return _key((*path, key)), key_node.start_mark.line + 1
            seen.add(key)
            if (found := _repeated_key(value_node, (*path, key))) is not None:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            if (found := _repeated_key(item, (*path, index))) is not None:
                return found
    return None


def load_settings(model: type[SettingsT], path: Path | None) -> SettingsT:
    """Load and validate the configuration, raising ConfigError with one line naming the key."""
    data: Any = {}
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--config: cannot read {path}: {exc.strerror or type(exc).__name__}") from None
        try:
            repeated = _repeated_key(yaml.compose(text, Loader=yaml.SafeLoader))
            if repeated is not None:
                key, line = repeated
                raise ConfigError(f"{key}: the key appears twice (line {line}); only one may stay")
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"--config: {path} is not valid YAML{where}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"(top level): {path} must hold a mapping of keys, not {type(data).__name__}")
    return settings_from_mapping(model, data)
