"""The composition root: the one module that knows every source. It declares the configuration's shape (the core's
keys plus one section per source), the state (one part per source), the collectors, and wires one configuration's
pollers under one supervisor; ``Exporter`` adds the web server and reloads.

Adding a source: its package (config model, poller, state type, collector, docs), then one line each here where it
is configured (``Settings``), held (``ExporterState``), started (``Polling.start``) and rendered
(``MirrorFarmCollector``); docs/architecture.md, "How to add a source".
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import signal
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Self

import aiohttp
from aiohttp.abc import AbstractResolver
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from pydantic import Field, field_validator, model_validator
from yarl import URL

from exporter import __version__, config
from exporter import external_url as external_urls
from exporter.config import (
    PRIMARY_TARGET,
    ConfigError,
    CoreSettings,
    Credentials,
    MirrorTarget,
    PollConfig,
    cluster_port_warning,
)
from exporter.git import collector as git_collector
from exporter.git.command import Git
from exporter.git.config import GitMirrorConfig, GitMirrorsDirConfig, RefsVerification
from exporter.git.poller import GitMirrors
from exporter.git.state import GitState
from exporter.git.verify import RefsProbe, RefVerifier
from exporter.jmx.collector import jmx_metrics
from exporter.jmx.config import JmxConfig
from exporter.jmx.poller import JmxPoller
from exporter.jmx.state import JmxState
from exporter.node_targets import NodeTarget, node_targets
from exporter.reloading import ConfigLoader, ReloadCollector, ReloadStatus
from exporter.rest import collector as rest_collector
from exporter.rest import landing as rest_landing
from exporter.rest.api import PrimaryApi
from exporter.rest.behind import behind as most_behind
from exporter.rest.client import DEFAULT_MAX_ROWS, BitbucketClient, HttpSetup, http_session
from exporter.rest.config import LagConfig, ProbeConfig
from exporter.rest.polling import RestConfig, RestPolling
from exporter.rest.probe import node_verdict
from exporter.rest.state import FarmState, MirrorState, PrimaryState
from exporter.sources import Health, SourceState, health_metrics, poll_forever, run_source
from exporter.state import Policy
from exporter.supervisor import Supervisor
from exporter.tls import load_pair
from exporter.web.auth import BasicAuth
from exporter.web.config import FLAG as WEB_FLAG
from exporter.web.config import WebConfig
from exporter.web.exposition import MAX_AGE_SECONDS
from exporter.web.landing import Landing
from exporter.web.probe import ProbePolicy
from exporter.web.server import DEFAULT_MAX_CONNECTIONS, Served, Server
from exporter.webhooks.collector import GateCollector, WebhookCollector
from exporter.webhooks.config import WebhooksConfig
from exporter.webhooks.gate import Gate
from exporter.webhooks.matching import Book
from exporter.webhooks.receiver import Receiver
from exporter.webhooks.setup import Delivery, Webhooks
from exporter.workers import WorkerPool

log = logging.getLogger("exporter")

DEFAULT_PORT = 9879


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{text!r} is not HOST:PORT")
        return cls(host.strip("[]") or "0.0.0.0", int(port))


# --- The configuration: the core's keys, one section per source -------------------------------------------------


class MirrorConfig(RefsVerification, MirrorTarget):
    """One ``mirrors`` entry: the core's keys (name, url, credentials, nodes), the git source's verify_refs and the
    JMX source's ``jmx`` block."""

    # The mirror nodes' JMX (sync timers, tickets); off unless set.
    jmx: JmxConfig | None = None


class Settings(CoreSettings):
    """The whole configuration: the core's keys and one section per source."""

    mirrors: list[MirrorConfig] = Field(default_factory=list)
    lag: LagConfig = Field(default_factory=LagConfig)
    # A node health check for load balancers, /probe/node (docs/nodes-behind-a-load-balancer.md); off unless enabled.
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    # Bitbucket's webhooks: push-to-mirror latency and the CI gate (docs/webhooks.md); off unless a secret is set.
    webhooks: WebhooksConfig = Field(default_factory=WebhooksConfig)
    # Also monitor every mirror the primary lists (mirrorServers), by its base URL with the primary's credentials.
    discover_mirrors: bool = False
    # jmxquery JVMs running at once, over all mirrors; each is a JVM start (about 0.3 s of CPU).
    jmx_concurrency: int = Field(default=4, ge=1, le=64)
    # Plain git reference mirrors (CI fleets' shared bare repositories) compared with their remotes
    # (docs/git-mirrors.md).
    git_mirrors: list[GitMirrorConfig] = Field(default_factory=list)
    git_mirrors_dir: GitMirrorsDirConfig | None = None
    # git processes running at once over all git mirrors.
    git_concurrency: int = Field(default=4, ge=1, le=64)

    @model_validator(mode="after")
    def _git_names(self) -> Self:
        taken = {PRIMARY_TARGET, *(m.name for m in self.mirrors)}
        seen: set[str] = set()
        for index, git_mirror in enumerate(self.git_mirrors):
            # The name is the `target` of the self-metrics too: it must not be a Bitbucket mirror's.
            if git_mirror.name in taken or git_mirror.name in seen:
                raise ValueError(
                    f"git_mirrors[{index}].name: {git_mirror.name!r} is taken (the primary, a mirror or another git "
                    "mirror)"
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
        found = super().warnings()
        for index, mirror in enumerate(self.mirrors):
            credentials = mirror.credentials_or(self.primary)
            if credentials.token is not None or credentials.token_file is not None:
                inherited = "" if mirror.is_set else " (inherited from primary)"
                found.append(
                    f"mirrors[{index}] ({mirror.name}): a token{inherited} cannot read supportInfo, which needs Basic "
                    "auth with an admin account (HTTP access tokens fail on admin endpoints, BSERV-10482)"
                )
            templates = {"nodes.url_template": mirror.nodes.url_template if mirror.nodes is not None else None}
            if mirror.jmx is not None:
                templates["jmx.exporter_url_template"] = mirror.jmx.exporter_url_template
                templates["jmx.mesh_exporter_url_template"] = mirror.jmx.mesh_exporter_url_template
            for key, template in templates.items():
                found += cluster_port_warning(f"mirrors[{index}].{key}", mirror.name, template)
        return found


def load_settings(path: Path | None) -> Settings:
    """Load and validate the configuration file (and environment), raising ConfigError with one line naming the key."""
    return config.load_settings(Settings, path)


def settings_from_mapping(data: dict[str, Any]) -> Settings:
    return config.settings_from_mapping(Settings, data)


@dataclass
class ExporterState(FarmState):
    """Everything the exporter learned, one part per source: the REST source's primary and mirrors (``FarmState``),
    each mirror's JMX nodes, the git mirrors and verify_refs, and Bitbucket's statistics of the exporter's webhooks.
    The pollers write it, the collectors and pages read it; a reload replaces it (``carry_over``)."""

    jmx: JmxState = field(default_factory=dict)
    git: GitState = field(default_factory=GitState)
    # webhooks.statistics_projects: read on its own interval (webhooks.statistics_interval_seconds).
    webhook_statistics: SourceState[list[Delivery]] = field(default_factory=lambda: SourceState(on_demand=True))

    @property
    def stale_after(self) -> float:
        return self.policy.stale_after

    def _extra_sources(self) -> dict[str, dict[str, SourceState[Any]]]:
        """Sources other packages poll for a REST target: the webhook statistics (the primary's), verify_refs."""
        extra: dict[str, dict[str, SourceState[Any]]] = {
            name: {"verify_refs": source} for name, source in self.git.verified.items() if source.polled
        }
        if self.webhook_statistics.polled:
            extra[PRIMARY_TARGET] = {"webhook_statistics": self.webhook_statistics}
        return extra

    def health(self) -> Health:
        """Every source's health, in the order the families list them."""
        yield from rest_collector.health(self, self._extra_sources())
        yield from git_collector.health(self.git.mirrors)
        yield from rest_collector.node_health(self)

    def analyses(self) -> tuple[int, ...]:
        """Which drift reports the state holds (each analysis makes a new one), mirrors' and nodes' alike."""
        return tuple(id(r) for m in self.mirrors for r in (m.drift, *(n.drift for n in m.nodes.values())))

    def landing(self, now: float) -> Landing:
        differing = [
            (str(r["mirror"]), f"{r['project']}/{r['repository']}", d["ref"], d["mirror"] or "(missing)", d["primary"])
            for r in self.refs(now)
            for d in r["behind"]  # type: ignore[attr-defined]
        ]
        sources = rest_landing.sources(self, self._extra_sources())
        return Landing(rest_landing.COLUMNS, rest_landing.rows(self, now), sources, differing)

    def refs(self, now: float) -> list[dict[str, object]]:
        return git_collector.verified_refs(self.git.verified, now, self.policy.stale_after)

    def behind(self, now: float, limit: int, mirror: str | None) -> dict[str, object] | None:
        return most_behind(self, now, limit, mirror)

    def probe_node(self, mirror: str, node: str, now: float, max_lag: float) -> tuple[bool, str] | None:
        verdict = node_verdict(self, mirror, node, now, max_lag)
        return (verdict.healthy, verdict.reason) if verdict is not None else None


class MirrorFarmCollector(Collector):
    """Every source's families from the state as it is at each scrape; ``state`` returns the exporter's current state
    (a reload replaces it) and ``clock`` the time (a test freezes it)."""

    def __init__(self, state: Callable[[], ExporterState], clock: Callable[[], float] = time.time) -> None:
        self._state = state
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        state, now = self._state(), self._clock()
        yield from rest_collector.rest_metrics(state, now)
        yield from jmx_metrics(state.jmx, now, state.policy.stale_after)
        yield from git_collector.git_metrics(state.git.mirrors, now, state.policy.stale_after)
        yield from git_collector.verified_metrics(state.git.verified, now, state.policy.stale_after)
        yield from health_metrics(state.health())


def policy(settings: Settings) -> Policy:
    return Policy(settings.per_repository_metrics, settings.max_repository_series, settings.poll.stale_after)


def build_state(settings: Settings) -> ExporterState:
    return ExporterState(
        primary=PrimaryState(url=settings.primary.url),
        mirrors=[MirrorState(name=m.name, url=m.url) for m in settings.mirrors],
        policy=policy(settings),
        webhook_statistics=SourceState(on_demand=True, own_interval=settings.webhooks.statistics_interval_seconds),
    )


def carry_over(old: ExporterState, settings: Settings) -> ExporterState:
    """The state for a reloaded configuration: targets whose name and URL did not change keep what was learned
    (last good values, error counts, drift history, JMX nodes, verify_refs), so a reload does not blank the
    dashboards. Git mirrors are followed by name (``GitMirrors.follow`` keeps a state whose name is still wanted)."""
    new = build_state(settings)
    statistics_interval = settings.webhooks.statistics_interval_seconds
    if old.primary.url == new.primary.url:
        new.primary = old.primary
        new.webhook_statistics, old.webhook_statistics.own_interval = old.webhook_statistics, statistics_interval
    kept = {(m.name, m.url): m for m in old.mirrors if not m.discovered}
    new.mirrors = [kept.get((m.name, m.url), m) for m in new.mirrors]
    names = {m.name for m in new.mirrors if any(m is k for k in kept.values())}
    new.jmx = {name: nodes for name, nodes in old.jmx.items() if name in names}
    new.git = GitState(list(old.git.mirrors), {n: s for n, s in old.git.verified.items() if n in names})
    return new


# What the worker processes import before they are forked (exporter/workers.py): the REST listings' work.
WORKER_PRELOAD = ("exporter.rest.listing_work",)


# --- Polling: one configuration's pollers under one supervisor ----------------------------------------------------


def nodes_of(mirror: MirrorConfig, credentials: Credentials, state: MirrorState) -> Callable[[], list[NodeTarget]]:
    """The mirror's nodes as they are now: static, or from its last good farmNodes."""
    return lambda: node_targets(mirror.nodes, credentials, state.farm_nodes.value or [])


def farm_of(state: MirrorState) -> Callable[[], list[NodeTarget]]:
    """The mirror's farmNodes with their addresses, whatever its nodes block says."""
    return lambda: node_targets(None, Credentials(), state.farm_nodes.value or [])


def max_rows(poll: PollConfig, primary_repositories: int | None) -> int:
    """Rows one listing walk may bring: poll.max_rows, else 10 x the primary's repository count (a mirror lists no
    more than the primary has), at least DEFAULT_MAX_ROWS. Before the primary's count is known (its first listing),
    only the walk's own bound (poll.max_pages pages of poll.page_limit rows): a fixed cap then would refuse, for ever,
    the very listing that makes the count known on an estate larger than the cap."""
    if poll.max_rows is not None:
        return poll.max_rows
    if primary_repositories is None:
        return poll.max_pages * poll.page_limit
    return max(DEFAULT_MAX_ROWS, 10 * primary_repositories)


class Polling:
    """Everything one configuration polls: a client session, every source's pollers and one supervisor of their
    tasks. A reload replaces it."""

    def __init__(
        self,
        settings: Settings,
        state: ExporterState,
        resolver: AbstractResolver | None,
        workers: WorkerPool,
        resume_anchor: float | None = None,
    ) -> None:
        self.settings = settings
        self.state = state
        self._resolver = resolver
        self._workers = workers
        self._resume_anchor = resume_anchor
        self.supervisor = Supervisor()
        self._session: aiohttp.ClientSession | None = None
        self._git: Git | None = None
        self.client: BitbucketClient | None = None
        self.rest: RestPolling | None = None
        # The primary's API of this configuration (the CI gate asks it about commits); None until started.
        self.primary_api: PrimaryApi | None = None
        self.refs_probe: RefsProbe | None = None
        self.git_mirrors: GitMirrors | None = None

    async def start(self) -> None:
        settings = self.settings
        setup = HttpSetup(settings.poll, settings.tls)
        self._session = http_session(setup, self._resolver)
        client = self.client = BitbucketClient(self._session, settings.poll)
        client.max_rows = self._max_rows
        # The mirrors' listings are walked in the worker processes, unless names resolve through a resolver given here.
        client.worker_http = setup if self._resolver is None else None
        await self.supervisor.start()
        rest_config = RestConfig(
            settings.primary, list(settings.mirrors), settings.poll.interval_seconds, settings.lag,
            settings.discover_mirrors,
        )  # fmt: skip
        rest = self.rest = RestPolling(
            rest_config, self.state, client, self.supervisor, self._workers, self._resume_anchor
        )
        self.primary_api = rest.primary_api
        rest.start()
        self._start_webhook_statistics(client)
        self._start_git()
        self._start_jmx(rest)

    def _start_webhook_statistics(self, client: BitbucketClient) -> None:
        """Bitbucket's delivery statistics of the exporter's webhooks, every statistics_interval_seconds."""
        config = self.settings.webhooks
        if not config.statistics_projects:
            return
        hooks = Webhooks(client, self.settings.primary, config, lambda line: None)
        statistics = self.state.webhook_statistics

        async def read() -> None:
            await run_source(
                PRIMARY_TARGET, "webhook_statistics", statistics, partial(hooks.statistics, config.statistics_projects)
            )

        self.supervisor.spawn(poll_forever(read, config.statistics_interval_seconds), "webhook statistics")

    def _start_git(self) -> None:
        settings = self.settings
        git = self._git = Git(settings.git_concurrency)  # starts nothing until a git mirror or verify_refs asks
        # The CI gate's refs proof: ls-remote of a mirror (or its nodes), through the same runner and its slots.
        probed: dict[str, tuple[RefsVerification, Credentials]] = {
            m.name: (m, m.credentials_or(settings.primary)) for m in settings.mirrors
        }
        self.refs_probe = RefsProbe(git, probed, settings.poll.timeout_seconds)
        if settings.git_mirrors or settings.git_mirrors_dir is not None:
            found = settings.git_mirrors_dir
            git_mirrors = self.git_mirrors = GitMirrors(
                settings.git_mirrors,
                found.found if found is not None else list,
                self.state.git.mirrors,
                git,
                self.supervisor.fleet("git mirror"),
            )
            self.supervisor.spawn(git_mirrors.run(), "git mirrors")
        for mirror in settings.mirrors:
            if mirror.verify_refs:
                source = self.state.git.verified.setdefault(mirror.name, SourceState())
                verifier = RefVerifier(source, mirror, mirror, settings.primary, git, settings.poll.timeout_seconds)
                loop = poll_forever(verifier.poll_once, settings.poll.interval_seconds)
                self.supervisor.spawn(loop, f"verify_refs:{mirror.name}")

    def _start_jmx(self, rest: RestPolling) -> None:
        settings = self.settings
        jvm_slots = asyncio.Semaphore(settings.jmx_concurrency)
        for mirror_state, mirror in zip(self.state.mirrors, settings.mirrors, strict=True):
            if mirror.jmx is None:
                continue
            credentials = mirror.credentials_or(settings.primary)
            jmx = JmxPoller(
                mirror.name,
                self.state.jmx,
                mirror.jmx,
                jvm_slots,
                rest.first_cycle(mirror.name),
                self.supervisor.fleet(f"{mirror.name} jmx node"),
                settings.poll.interval_seconds,
                farm=farm_of(mirror_state),
                nodes=nodes_of(mirror, credentials, mirror_state),
                fetch_text=self._fetch_text,
            )
            self.supervisor.spawn(jmx.run(), f"jmx:{mirror.name}")

    async def _fetch_text(self, url: str) -> str:
        """A jmx_exporter page: no credentials (Atlassian's chart serves them without), the top-level tls."""
        assert self.client is not None
        return await self.client.get(URL(url), Credentials(), lambda body: body.decode("utf-8", "replace"))

    async def poll_once(self) -> None:
        assert self.rest is not None
        await self.rest.poll_once()

    @property
    def anchor(self) -> float:
        """The grid this configuration's REST loops start their cycles on (monotonic)."""
        assert self.rest is not None
        return self.rest.anchor

    @property
    def dating_lookups(self) -> int:
        return self.rest.dating.lookups if self.rest is not None else 0

    def _max_rows(self) -> int:
        known = self.state.primary.repositories.value
        return max_rows(self.settings.poll, len(known) if known is not None else None)

    async def stop(self) -> None:
        await self.supervisor.stop()
        if self._git is not None:
            self._git.close()  # its askpass helper's directory: one per configuration, not one per reload
        if self._session is not None:
            await self._session.close()


# POST /-/reload runs at most once in this many seconds (SIGHUP is not limited: it takes a shell on the host).
HTTP_RELOAD_SECONDS = 10.0


class Exporter:
    """One running exporter: call ``start`` then ``stop``; ``port`` is the bound port (useful with port 0).

    ``loader`` reads the configuration again for ``reload`` (SIGHUP, ``POST /-/reload``); without one there is
    nothing to reload (the demo)."""

    def __init__(
        self,
        settings: Settings,
        listen: ListenAddress,
        resolver: AbstractResolver | None = None,
        web_config: WebConfig | None = None,
        loader: ConfigLoader[Settings] | None = None,
        max_rendering_age: float = MAX_AGE_SECONDS,
        lifecycle: bool = False,
        http_reload_interval: float = HTTP_RELOAD_SECONDS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        worker_processes: int | None = None,
        external_url: str | None = None,
    ) -> None:
        self.settings = settings
        self.listen = listen
        # --web.external-url, else this machine's name and the port (resolved at start, when the port is bound).
        self._external_url = external_url
        # aiohttp's default (the system's getaddrinfo, cached 10 s) unless given: a given resolver is asked at every
        # new connection (tests resolve names from a table they change).
        self._resolver = resolver
        self._web_config = web_config or WebConfig()
        self._loader = loader
        self.reloads = ReloadStatus()
        self._reload_lock = asyncio.Lock()
        # POST /-/reload (only with --web.enable-lifecycle): at most one every http_reload_interval seconds; the
        # requests that come meanwhile share the next one.
        self._http_reload_interval = http_reload_interval
        self._last_http_reload = -math.inf
        self._next_http_reload: asyncio.Task[tuple[bool, str]] | None = None
        # The one owner of what was learned: the collectors and the pages read it through this object, so a reload
        # changes this one reference (and the Polling that writes it).
        self.state = build_state(settings)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(MirrorFarmCollector(lambda: self.state))
        self.registry.register(ReloadCollector(self.reloads))
        self.webhooks, self.gate = self._webhooks_and_gate()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._served = Served(
            lambda: self.state,
            self.registry,
            BasicAuth(self._web_config.basic_auth_users),
            self._reload_over_http if loader is not None else None,
            lambda: self.settings.webhooks.path if self.settings.webhooks.enabled else None,
            self.webhooks.handle,
            self.gate.ask,
            max_rendering_age=max_rendering_age,
            lifecycle=lifecycle,
            max_connections=max_connections,
            probe=lambda: ProbePolicy(**self.settings.probe.model_dump()),
            external_url=lambda: self.external_url,
        )
        self.registry.register(self._served.refusals)
        # Outlive reloads: a reload changes what they are sent, not the processes.
        self.workers = WorkerPool(WORKER_PRELOAD, worker_processes)
        self.registry.register(self.workers)
        self._polling = Polling(settings, self.state, resolver, self.workers)
        self._web_tls: ssl.SSLContext | None = None
        self._server: Server | None = None
        # What outlives reloads: the expiry of unconfirmed pushes.
        self._background = Supervisor()
        self.port = listen.port

    def _webhooks_and_gate(self) -> tuple[Receiver, Gate]:
        """The webhook receiver and the CI gate, with their collectors. What the webhooks taught outlives reloads (a
        reload changes the limits, not the pending pushes); the gate asks the current configuration's primary about
        commits the webhooks did not bring."""
        config = self.settings.webhooks
        receiver = Receiver(
            lambda: self.settings.webhooks,
            Book(config.pending_timeout_seconds, config.max_pending),
            lambda server_id, name: self.state.mirror_of_server(server_id, name),
        )
        self.registry.register(
            WebhookCollector(
                lambda: self.settings.webhooks.enabled or bool(self.settings.webhooks.statistics_projects),
                receiver,
                lambda: self.state.webhook_statistics.fresh(time.time(), self.state.policy.stale_after),
            )
        )
        gate = Gate(
            lambda: self.state,
            receiver,
            lambda: self._polling.primary_api,
            lambda: (self.settings.lag.page_limit, self.settings.lag.max_pages),
            refs=lambda: self._polling.refs_probe,
        )
        self.registry.register(GateCollector(gate))
        return receiver, gate

    @property
    def external_url(self) -> str:
        """Where people reach this exporter: the base of the links it writes (``exporter/external_url.py``)."""
        if self._external_url is not None:
            return self._external_url
        return external_urls.default(self.listen.host, self.port, self._web_config.tls_server_config is not None)

    @property
    def client(self) -> BitbucketClient | None:
        return self._polling.client

    def rendered_since(self, made: float) -> bool:
        """Whether /metrics now serves renderings made at or after ``made`` (monotonic)."""
        exposition = self._server.exposition if self._server is not None else None
        return exposition is not None and exposition.rendered_since(made)

    @property
    def polling(self) -> Polling:
        """The running configuration's pollers (a test steps a git_mirrors_dir scan by hand, or counts tasks)."""
        return self._polling

    @property
    def push_lookups(self) -> int:
        """Ref change activity pages asked so far by the running configuration (bench/scale.py reports them)."""
        return self._polling.dating_lookups

    async def start(self) -> None:
        tls = self._web_config.tls_server_config
        self._web_tls = tls.context() if tls is not None else None
        self._server = Server(self._served, self.listen.host, self.listen.port, self._web_tls)
        await self._server.start()
        self.port = self._server.port
        await self.workers.start()
        await self._polling.start()
        await self._background.start()
        self._background.spawn(self._expire_pushes(), "expire pushes")
        log.info(
            "exporter started",
            extra={
                "version": __version__,
                "address": f"{self.listen.host}:{self.port}",
                "external_url": self.external_url,
                "tls": self._web_tls is not None,
                "basic_auth": self._served.auth.enabled,
                "mirrors": len(self.settings.mirrors),
                "interval_seconds": self.settings.poll.interval_seconds,
            },
        )

    async def poll_once(self) -> None:
        """One more cycle of every target now, beside the schedule (bench/scale.py measures steady cycles so)."""
        await self._polling.poll_once()

    async def reload(self) -> tuple[bool, str]:
        """Read the configuration again and apply it; on any problem keep running the old one and say why."""
        assert self._loader is not None
        async with self._reload_lock:
            try:
                # Off the loop: loading reads files (secrets too) and checks every bcrypt hash.
                settings, web_config = await asyncio.to_thread(self._loader)
                self._check_web_tls(web_config)
            except ConfigError as exc:
                self.reloads.failed()
                log.error("config reload failed, keeping the running configuration", extra={"err": str(exc)})
                return False, f"config reload failed, keeping the running configuration: {exc}"
            await self._apply(settings, web_config)
            self.reloads.succeeded()
            log.info("config reloaded", extra={"mirrors": len(settings.mirrors)})
            return True, "config reloaded"

    async def _reload_over_http(self) -> tuple[bool, str]:
        """``POST /-/reload``: a reload now, or, within ``http_reload_interval`` of the last one, the next one,
        shared by every request until it runs (a flood of POSTs costs one reload per interval, not one each)."""
        if self._next_http_reload is None:
            wait = self._last_http_reload + self._http_reload_interval - time.monotonic()
            self._next_http_reload = asyncio.create_task(self._http_reload_after(max(0.0, wait)))
        return await asyncio.shield(self._next_http_reload)

    async def _http_reload_after(self, wait: float) -> tuple[bool, str]:
        try:
            await asyncio.sleep(wait)
            self._last_http_reload = time.monotonic()
        finally:
            self._next_http_reload = None
        return await self.reload()

    def _check_web_tls(self, web_config: WebConfig) -> None:
        tls = web_config.tls_server_config
        if tls != self._web_config.tls_server_config:
            raise ConfigError(f"{WEB_FLAG}: tls_server_config: files or policy changed; that needs a restart")
        if tls is not None and self._web_tls is not None:
            try:
                # Same files, perhaps new contents (cert-manager renews in place): new handshakes use them.
                load_pair(self._web_tls, tls.cert_file, tls.key_file)
            except ValueError as exc:
                raise ConfigError(f"{WEB_FLAG}: tls_server_config: {exc}") from None

    async def _apply(self, settings: Settings, web_config: WebConfig) -> None:
        # The old pollers stop first, so no target is ever polled twice at once; the new ones keep their grid.
        await self._polling.stop()
        self.state = carry_over(self.state, settings)
        self.settings, self._web_config = settings, web_config
        # Checks already made stay remembered (their key holds the hash), and so do the addresses that kept failing.
        self._served.auth = BasicAuth(web_config.basic_auth_users, previous=self._served.auth)
        same_interval = settings.poll.interval_seconds == self._polling.settings.poll.interval_seconds
        self._polling = Polling(
            settings, self.state, self._resolver, self.workers, self._polling.anchor if same_interval else None
        )
        await self._polling.start()

    async def _expire_pushes(self) -> None:
        """Count and forget pushes no mirror confirmed in time, about every tenth of the timeout (at most a minute)."""
        while True:
            config = self.settings.webhooks
            self.webhooks.book.timeout, self.webhooks.book.max_pending = (
                config.pending_timeout_seconds,
                config.max_pending,
            )
            self.webhooks.book.expire(time.time(), [m.name for m in self.state.mirrors])
            await asyncio.sleep(min(60.0, config.pending_timeout_seconds / 10))

    async def stop(self) -> None:
        if self._next_http_reload is not None:
            self._next_http_reload.cancel()
            await asyncio.gather(self._next_http_reload, return_exceptions=True)
        await self._background.stop()
        await self._polling.stop()
        await self.workers.stop()
        if self._server is not None:
            await self._server.stop()
        log.info("exporter stopped")


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM, so the running coroutine can shut down cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def settle_heap() -> None:
    """Once started, move everything alive (modules, classes, the configuration: tens of thousands of objects that
    live as long as the process) out of the garbage collector's view. Each full collection then walks only what the
    polls allocate: 6 ms instead of 38 ms at 100k repositories x 3 mirrors x 3 nodes, a stall every scrape in flight
    would wait for (bench/README.md)."""
    gc.freeze()


async def serve_until_stopped(exporter: Exporter, stop: asyncio.Event) -> None:
    await exporter.start()
    settle_heap()
    try:
        await stop.wait()
    finally:
        await exporter.stop()
