"""Configuration: one YAML file, overridable by environment variables.

Environment variables use the prefix ``BITBUCKET_MIRROR_EXPORTER_`` and ``__`` between nested keys, for example
``BITBUCKET_MIRROR_EXPORTER_PRIMARY__PASSWORD``. Lists (``MIRRORS``) take JSON. The environment wins over the file.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from exporter.git.config import GitMirrorConfig, GitMirrorsDirConfig
from exporter.jmx.config import JmxConfig
from exporter.secret_files import UserPassword, read_secret_file, readable_secret_file
from exporter.tls import client_context
from exporter.urls import check_base_url, check_node_template
from exporter.webhooks.config import WebhooksConfig

ENV_PREFIX = "BITBUCKET_MIRROR_EXPORTER_"
PRIMARY_TARGET = "primary"


class ConfigError(Exception):
    """A configuration problem, phrased as one line that names the offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class _Target(Credentials):
    url: str

    @field_validator("url")
    @classmethod
    def _base_url(cls, url: str) -> str:
        return check_base_url(url)


class PrimaryConfig(_Target):
    pass


class StaticNode(_Target):
    """One node of a farm by its own base URL; without credentials of its own it uses the mirror's."""

    name: str = Field(min_length=1, max_length=128)


class NodesConfig(_Strict):
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


class MirrorConfig(_Target):
    name: str = Field(min_length=1, max_length=128)
    # Each node's own URL, to read its node-local listings; absent: the farm URL only (one node per walk).
    nodes: NodesConfig | None = None
    # The mirror nodes' JMX (sync timers, tickets); off unless set.
    jmx: JmxConfig | None = None
    # Repositories (KEY/slug) whose refs `git ls-remote` compares on the primary and this mirror: which branch and
    # which commit differ, where content hashes only say that something does.
    verify_refs: list[str] = Field(default_factory=list, max_length=50)
    # Where git clones a repository over HTTP; {base} is the primary's or the mirror's URL.
    clone_url_template: str = "{base}/scm/{project}/{slug}.git"

    @field_validator("verify_refs")
    @classmethod
    def _repositories(cls, repositories: list[str]) -> list[str]:
        for repository in repositories:
            project, _, slug = repository.partition("/")
            if not project or not slug or "/" in slug:
                raise ValueError(f"{repository!r}: give each as PROJECTKEY/slug")
        return repositories

    @field_validator("clone_url_template")
    @classmethod
    def _clone_template(cls, template: str) -> str:
        try:
            url = template.format(base="https://mirror.example", project="PRJ", slug="repo")
        except (KeyError, IndexError, ValueError):
            raise ValueError("may use only the placeholders {base}, {project}, {slug}") from None
        check_base_url(url)
        return template

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name == PRIMARY_TARGET:
            raise ValueError(f"'{PRIMARY_TARGET}' is reserved for the primary's target label")
        return name


class PollConfig(_Strict):
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
    # 100,000 (a mirror lists no more repositories than the primary has; a runaway answer is refused, not held).
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


class LagConfig(_Strict):
    """Dating each divergence from the push that began it (the primary's ref change activity), so lag survives a
    restart and two exporters agree. Needs REPO_ADMIN on the repositories for the primary's user; without it (or
    when a lookup fails) a repository's lag counts from when the exporter first saw it, and says so."""

    from_push: bool = True
    # Activity pages asked of the primary per cycle, over every mirror and node: the longest-lagging first. A page is
    # asked once per (repository, primary content hash); repositories in sync cost nothing.
    lookups_per_cycle: int = Field(default=50, ge=0, le=10000)
    # Ref changes per page: a repository with more pushes since its mirror last synced is dated from the oldest on
    # the page (lag read low, never high).
    page_limit: int = Field(default=25, ge=1, le=1000)
    # Pages of ``page_limit`` read per lookup where the server lists its ref changes oldest first (the order is not
    # published): the newest are then on the last page. Newest first, one page is read.
    max_pages: int = Field(default=4, ge=1, le=100)
    # After a failed lookup (no REPO_ADMIN, 404, an error), cycles before the repository is asked again unless its
    # content changes first.
    failure_backoff_cycles: int = Field(default=10, ge=1, le=10000)


class TlsConfig(_Strict):
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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    primary: PrimaryConfig
    mirrors: list[MirrorConfig] = Field(default_factory=list)
    poll: PollConfig = Field(default_factory=PollConfig)
    lag: LagConfig = Field(default_factory=LagConfig)
    # Bitbucket's webhooks: push-to-mirror latency and the CI gate (docs/webhooks.md); off unless a secret is set.
    webhooks: WebhooksConfig = Field(default_factory=WebhooksConfig)
    tls: TlsConfig = Field(default_factory=TlsConfig)
    # Also monitor every mirror the primary lists (mirrorServers), by its base URL with the primary's credentials.
    discover_mirrors: bool = False
    # Which repositories get per-repository series: all, only drifting/missing/failing ones, or none.
    per_repository_metrics: Literal["all", "unhealthy", "none"] = "unhealthy"
    # 100 per mirror: the dashboards show the worst 50, and prometheus-client renders about 7 µs per sample, so a
    # larger default would make every scrape of a big farm slow (bench/README.md).
    max_repository_series: int = Field(default=100, ge=0)
    # jmxquery JVMs running at once, over all mirrors; each is a JVM start (about 0.3 s of CPU).
    jmx_concurrency: int = Field(default=4, ge=1, le=64)
    # Plain git reference mirrors (CI fleets' shared bare repositories) compared with their remotes
    # (docs/git-mirrors.md).
    git_mirrors: list[GitMirrorConfig] = Field(default_factory=list)
    git_mirrors_dir: GitMirrorsDirConfig | None = None
    # git processes running at once over all git mirrors.
    git_concurrency: int = Field(default=4, ge=1, le=64)

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

    @model_validator(mode="after")
    def _git_names(self) -> Self:
        taken = {PRIMARY_TARGET, *(m.name for m in self.mirrors)}
        seen: set[str] = set()
        for i, git_mirror in enumerate(self.git_mirrors):
            # The name is the `target` of the self-metrics too: it must not be a Bitbucket mirror's.
            if git_mirror.name in taken or git_mirror.name in seen:
                raise ValueError(
                    f"git_mirrors[{i}].name: {git_mirror.name!r} is taken (the primary, a mirror or another git mirror)"
                )
            seen.add(git_mirror.name)
        return self

    @field_validator("mirrors")
    @classmethod
    def _unique_mirrors(cls, mirrors: list[MirrorConfig]) -> list[MirrorConfig]:
        seen_names: set[str] = set()
        seen_urls: set[str] = set()
        for mirror in mirrors:
            if mirror.name in seen_names:
                raise ValueError(f"mirror name {mirror.name!r} is used twice")
            if mirror.url in seen_urls:
                raise ValueError(f"mirror url {mirror.url!r} is used twice")
            seen_names.add(mirror.name)
            seen_urls.add(mirror.url)
        return mirrors

    def warnings(self) -> list[str]:
        """Settings that are valid but probably not what the admin meant; logged once when the config is loaded."""
        found = []
        if self.poll.timeout_seconds > self.poll.interval_seconds:
            found.append(
                f"poll.timeout_seconds ({self.poll.timeout_seconds:g}) is longer than poll.interval_seconds "
                f"({self.poll.interval_seconds:g}): a slow answer delays the next poll and values age past an interval"
            )
        for i, mirror in enumerate(self.mirrors):
            credentials = mirror.credentials_or(self.primary)
            if credentials.token is not None or credentials.token_file is not None:
                inherited = "" if mirror.is_set else " (inherited from primary)"
                found.append(
                    f"mirrors[{i}] ({mirror.name}): a token{inherited} cannot read supportInfo, which needs Basic "
                    "auth with an admin account (HTTP access tokens fail on admin endpoints, BSERV-10482)"
                )
            found += _cluster_port_warnings(i, mirror)
        return found


def _cluster_port_warnings(index: int, mirror: MirrorConfig) -> list[str]:
    """``{port}`` in a node URL template is farmNodes' ``address.port``: the node's cluster (Hazelcast) port, 5701 in
    Atlassian's chart, which speaks no HTTP (reference section 8; docs/assumptions.md)."""
    templates = {"nodes.url_template": mirror.nodes.url_template if mirror.nodes is not None else None}
    if mirror.jmx is not None:
        templates["jmx.exporter_url_template"] = mirror.jmx.exporter_url_template
        templates["jmx.mesh_exporter_url_template"] = mirror.jmx.mesh_exporter_url_template
    return [
        f"mirrors[{index}].{key} ({mirror.name}) uses {{port}}, which farmNodes fills with the node's cluster "
        "(Hazelcast) port, not its HTTP port: write the HTTP port instead, e.g. http://{address}:7990"
        for key, template in templates.items()
        if template is not None and "{port}" in template
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


def settings_from_mapping(data: dict[str, Any]) -> Settings:
    try:
        return Settings(**data)
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


def load_settings(path: Path | None) -> Settings:
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
    return settings_from_mapping(data)
