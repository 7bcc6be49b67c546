"""``bitbucket-mirror-exporter webhooks apply|status``: the webhooks set up over Bitbucket's REST API, not by clicking.

``apply`` creates, or updates to the wanted state, one webhook per (project, exporter URL) named
``bitbucket-mirror-exporter`` with the events ``repo:refs_changed`` and ``mirror:repo_synchronized`` (those of them
the primary offers: ``rest/capabilities`` names the URL of its one global list of webhook events) and the secret of
``webhooks.secret_file``. Where a project webhook cannot be had (Bitbucket refuses it with 400, or the primary is
older than 8.10 and has no project webhooks: 404), it sets one up on each repository of the project instead, and says
which it used. Running it again changes nothing that is already right.

``status`` (and ``webhooks.statistics_projects``) reads the exporter's webhooks of each project: the project's own
listing first, and each repository's only where the project has none of the exporter's, within
``webhooks.statistics_max_requests`` requests a project. For each webhook, Bitbucket's statistics summary (a map
keyed by event id of the outcomes counted in its current window; 204 before the first delivery) and the latest
invocation of each event and outcome (``latest?event=&outcome=``). Shapes: tests/fixtures/bitbucket/, with their
sources. Neither command ever prints a credential or the secret.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from yarl import URL

from exporter.config import PrimaryConfig
from exporter.rest.client import BitbucketClient, parse_json
from exporter.secret_files import prepare, read_secret_file
from exporter.sources import FetchError
from exporter.webhooks.config import WebhooksConfig

NAME = "bitbucket-mirror-exporter"
EVENTS = ("repo:refs_changed", "mirror:repo_synchronized")
# Bitbucket's outcomes of an invocation, and the label each gets: SUCCESS a 2xx answer, FAILURE any other answer,
# ERROR no answer at all (refused, timed out).
OUTCOMES = {"SUCCESS": "success", "FAILURE": "failure", "ERROR": "error"}
COUNTS = {"successes": "success", "failures": "failure", "errors": "error"}


class SetupError(Exception):
    """A usage problem (exit 2), phrased as one line."""


class BudgetSpent(Exception):
    """The request budget of one project's reading is spent: what was read is kept, the rest is said."""


@dataclass(frozen=True)
class Scope:
    """A project, or one repository of it: where a webhook lives."""

    project: str
    slug: str | None = None

    def path(self, base: str) -> URL:
        url = URL(base.rstrip("/") + "/rest/api/latest/projects") / self.project
        return (url / "repos" / self.slug / "webhooks") if self.slug else url / "webhooks"

    def __str__(self) -> str:
        return f"{self.project}/{self.slug}" if self.slug else self.project


@dataclass(frozen=True)
class EventDeliveries:
    """What Bitbucket's statistics say of one event of one webhook: the outcomes counted in its current window
    (absent before the first delivery of the event) and when the latest invocation of each outcome started."""

    event: str
    counts: dict[str, int] = field(default_factory=dict)  # "success" | "failure" | "error" -> deliveries
    window_start: float | None = None  # Unix seconds
    window_seconds: float | None = None
    last: dict[str, float] = field(default_factory=dict)  # outcome label -> Unix seconds


@dataclass(frozen=True)
class Delivery:
    """One of the exporter's webhooks and what Bitbucket says of its deliveries; ``problem`` when it could not be
    read (the reason), ``delivered`` False while Bitbucket has no deliveries of it yet (204)."""

    scope: str
    url: str
    events: tuple[EventDeliveries, ...] = ()
    problem: str = ""
    delivered: bool = True

    def last(self, outcome: str) -> float | None:
        """The latest invocation with ``outcome`` (success, failure, error) over all events, Unix seconds."""
        times = [e.last[outcome] for e in self.events if outcome in e.last]
        return max(times) if times else None


def epoch_seconds(value: Any) -> float | None:
    """Bitbucket's epoch milliseconds (the project's one rule: above 1e11 milliseconds, else seconds)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value / 1000 if value > 1e11 else float(value)


def parse_summary(summary: Any) -> dict[str, EventDeliveries]:
    """``statistics/summary``: a map keyed by event id of ``{successes, failures, errors, window{start,
    duration}}``. Unknown members are ignored and a count that is not a number left out (tolerant)."""
    if not isinstance(summary, dict):
        raise ValueError("statistics summary is not an object keyed by event")
    events = {}
    for event, entry in summary.items():
        if not isinstance(entry, dict):
            continue
        counts = {
            label: int(entry[key])
            for key, label in COUNTS.items()
            if isinstance(entry.get(key), int | float) and not isinstance(entry.get(key), bool)
        }
        window = entry.get("window")
        start = epoch_seconds(window.get("start")) if isinstance(window, dict) else None
        milliseconds = window.get("duration") if isinstance(window, dict) else None
        duration = milliseconds / 1000 if isinstance(milliseconds, int | float) and milliseconds >= 0 else None
        events[str(event)] = EventDeliveries(str(event), counts, start, duration)
    return events


def capability_url(document: Any, name: str) -> str | None:
    """``rest/capabilities`` maps each capability's name to its URL (``capabilities``)."""
    listed = document.get("capabilities") if isinstance(document, dict) else None
    url = listed.get(name) if isinstance(listed, dict) else None
    return url if isinstance(url, str) else None


def webhook_events(document: Any) -> list[str] | None:
    """The ``webhooks`` capability: ``{"application-webhooks": [event ids]}``."""
    events = document.get("application-webhooks") if isinstance(document, dict) else None
    return [str(e) for e in events] if isinstance(events, list) else None


def invocation_start(invocation: Any) -> float | None:
    """When a RestDetailedInvocation started (else finished), Unix seconds."""
    if not isinstance(invocation, dict):
        return None
    return epoch_seconds(invocation.get("start", invocation.get("finish")))


def optional_json(body: bytes) -> Any:
    """A JSON body, or None for none: Bitbucket answers 204 where there is nothing to tell yet."""
    return parse_json(body) if body.strip() else None


class Webhooks:
    def __init__(
        self,
        client: BitbucketClient,
        primary: PrimaryConfig,
        config: WebhooksConfig,
        out: Callable[[str], None],
        max_requests: int | None = None,
    ) -> None:
        self._client = client
        self._primary = primary
        self._config = config
        self._base = primary.url
        self._out = out
        self._max_requests = max_requests or config.statistics_max_requests
        self._budget_end = 0

    def _requests(self) -> int:
        return sum(self._client.stats.requests.values())

    def _spend(self) -> None:
        if self._budget_end and self._requests() >= self._budget_end:
            raise BudgetSpent

    async def _get(self, url: URL, params: dict[str, str | int] | None = None) -> Any:
        self._spend()
        return await self._client.get(url, self._primary, optional_json, params)

    async def _values(self, url: URL, params: dict[str, str | int] | None = None) -> list[dict[str, Any]]:
        self._spend()
        values = await self._client.get_all(url, self._primary, params)
        return [v for v in values if isinstance(v, dict)]

    async def projects(self) -> list[str]:
        url = URL(self._base.rstrip("/") + "/rest/api/latest/projects")
        return [str(p["key"]) for p in await self._values(url) if isinstance(p.get("key"), str)]

    async def _repositories(self, project: str) -> list[str]:
        url = URL(self._base.rstrip("/") + "/rest/api/latest/projects") / project / "repos"
        return [str(r["slug"]) for r in await self._values(url) if isinstance(r.get("slug"), str)]

    async def offered_events(self) -> list[str] | None:
        """The webhook events the primary offers: ``rest/capabilities`` names the URL of the ``webhooks``
        capability, which answers ``{"application-webhooks": [...]}``, one global list. None when it cannot say."""
        try:
            webhooks = capability_url(await self._get(URL(self._base.rstrip("/") + "/rest/capabilities")), "webhooks")
            if webhooks is None or not _same_origin(webhooks, self._base):
                return None  # never follow a capability URL to another host with the primary's credentials
            return webhook_events(await self._get(URL(webhooks)))
        except FetchError:
            return None

    def _wanted(self, url: str, secret: str, events: list[str]) -> dict[str, Any]:
        return {
            "name": NAME,
            "url": url,
            "events": events,
            "active": True,
            "configuration": {"secret": secret},
            "sslVerificationRequired": True,
        }

    async def _put(self, scope: Scope, wanted: dict[str, Any], dry_run: bool) -> str:
        """Create or update the webhook of ``scope`` for the wanted URL; what it did."""
        existing = next((w for w in await self._values(scope.path(self._base)) if w.get("url") == wanted["url"]), None)
        # An existing one is updated every time: its secret cannot be read back to compare, and setting the same
        # state again changes nothing.
        verb = "updated" if existing is not None else "created"
        if dry_run:
            return f"would be {verb}"
        if existing is not None:
            target = scope.path(self._base) / str(existing.get("id"))
            await self._client.send_json("PUT", target, self._primary, wanted)
        else:
            await self._client.send_json("POST", scope.path(self._base), self._primary, wanted)
        return verb

    async def apply(self, projects: list[str], urls: list[str], dry_run: bool) -> None:
        config = self._config
        if config.secret_file is None:
            raise SetupError("webhooks.secret_file: set it first (the webhooks are signed with that secret)")
        await prepare(config.secret_file)
        secret = read_secret_file(config.secret_file).get_secret_value()
        offered = await self.offered_events()
        events = [e for e in EVENTS if offered is None or e in offered]
        if not events:
            raise SetupError(f"the primary offers neither {' nor '.join(EVENTS)} as a webhook event")
        for missing in (e for e in EVENTS if e not in events):
            self._out(f"the primary does not offer {missing} (rest/capabilities); subscribing to the rest only")
        named = ", ".join(events)
        for project in projects:
            for url in urls:
                wanted = self._wanted(url, secret, events)
                try:
                    verb = await self._put(Scope(project), wanted, dry_run)
                    self._out(f"{project}: project webhook {verb} for {url} ({named})")
                    continue
                except FetchError as exc:
                    if exc.status == 404:
                        self._out(f"{project}: no project webhooks on this primary (before 8.10); per repository")
                    elif exc.status == 400:
                        self._out(f"{project}: a project webhook cannot carry {named}; per repository instead")
                    else:
                        raise
                for slug in await self._repositories(project):
                    verb = await self._put(Scope(project, slug), wanted, dry_run)
                    self._out(f"{project}/{slug}: repository webhook {verb} for {url} ({named})")

    async def _read(self, scope: Scope, hook: dict[str, Any]) -> Delivery:
        """A webhook's statistics summary and the latest invocation of each of its events and outcomes."""
        base = scope.path(self._base) / str(hook.get("id"))
        url = str(hook.get("url"))
        try:
            summary = await self._get(base / "statistics" / "summary")
            if summary is None:
                return Delivery(str(scope), url, delivered=False)
            counted = parse_summary(summary)
            subscribed = [e for e in hook.get("events", []) if isinstance(e, str)] or list(EVENTS)
            events = []
            for event in sorted(set(subscribed) | set(counted)):
                last = {}
                for outcome, label in OUTCOMES.items():
                    at = invocation_start(await self._get(base / "latest", {"event": event, "outcome": outcome}))
                    if at is not None:
                        last[label] = at
                known = counted.get(event, EventDeliveries(event))
                events.append(EventDeliveries(event, known.counts, known.window_start, known.window_seconds, last))
        except FetchError as exc:
            return Delivery(str(scope), url, problem=exc.reason)
        except ValueError as exc:
            return Delivery(str(scope), url, problem=f"invalid_response: {exc}")
        return Delivery(str(scope), url, tuple(events))

    async def _project(self, project: str) -> tuple[list[Delivery], str]:
        """The exporter's webhooks of one project (project-level, else per repository) and what was left unread."""
        found: list[Delivery] = []
        self._budget_end = self._requests() + self._max_requests
        try:
            try:
                hooks = await self._values(Scope(project).path(self._base), {"event": EVENTS[1]})
            except FetchError as exc:
                if exc.status != 404:
                    raise
                hooks = []  # before 8.10: no project webhooks
            ours = [h for h in hooks if h.get("name") == NAME]
            for hook in ours:
                found.append(await self._read(Scope(project), hook))
            if ours:
                return found, ""
            slugs = await self._repositories(project)
            for done, slug in enumerate(slugs):
                try:
                    hooks = await self._values(Scope(project, slug).path(self._base), {"event": EVENTS[1]})
                    for hook in (h for h in hooks if h.get("name") == NAME):
                        found.append(await self._read(Scope(project, slug), hook))
                except BudgetSpent:
                    return found, f"{project}: {len(slugs) - done} of {len(slugs)} repositories not read " \
                                  f"(request budget of {self._max_requests} spent)"  # fmt: skip
        except BudgetSpent:
            return found, f"{project}: request budget of {self._max_requests} spent"
        finally:
            self._budget_end = 0
        return found, ""

    async def statistics(self, projects: list[str]) -> list[Delivery]:
        """The exporter's webhooks (by name) of each project with their statistics."""
        found = []
        for project in projects:
            deliveries, _ = await self._project(project)
            found += deliveries
        return found

    async def status(self, projects: list[str]) -> None:
        for project in projects:
            deliveries, unread = await self._project(project)
            for delivery in deliveries:
                self._out(f"{delivery.scope}: {delivery.url}: {describe(delivery)}")
            if not deliveries:
                self._out(f"{project}: none of the exporter's webhooks found")
            if unread:
                self._out(unread)


def _same_origin(url: str, base: str) -> bool:
    one, other = URL(url), URL(base)
    return (one.scheme, one.host, one.port) == (other.scheme, other.host, other.port)


def describe(delivery: Delivery) -> str:
    """One line: the last success, failure and error, and the counts of Bitbucket's current window per event."""
    if delivery.problem:
        return f"statistics unavailable ({delivery.problem})"
    if not delivery.delivered:
        return "no deliveries yet"

    def when(outcome: str) -> str:
        at = delivery.last(outcome)
        return "never" if at is None else datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")

    parts = [f"last {label} {when(label)}" for label in OUTCOMES.values()]
    for event in delivery.events:
        if event.counts:
            counts = ", ".join(f"{event.counts.get(label, 0)} {label}" for label in OUTCOMES.values())
            parts.append(f"{event.event}: {counts} in the window")
    return "; ".join(parts)
