"""``bitbucket-mirror-exporter webhooks apply|status``: the webhooks set up over Bitbucket's REST API, not by clicking.

``apply`` creates, or updates to the wanted state, one webhook per (project, exporter URL) named
``bitbucket-mirror-exporter`` with the events ``repo:refs_changed`` and ``mirror:repo_synchronized`` and the secret
of ``webhooks.secret_file``. Where a project webhook cannot carry ``mirror:repo_synchronized`` (Bitbucket refuses
it, or ``rest/capabilities`` does not list it for projects), it sets one up on each repository of the project
instead, and says which it used. Running it again changes nothing that is already right. ``status`` reads each of
those webhooks' statistics. Neither ever prints a credential or the secret.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from yarl import URL

from exporter.config import Settings
from exporter.rest.client import BitbucketClient
from exporter.secret_files import read_secret_file
from exporter.sources import FetchError

NAME = "bitbucket-mirror-exporter"
EVENTS = ("repo:refs_changed", "mirror:repo_synchronized")


class SetupError(Exception):
    """A usage problem (exit 2), phrased as one line."""


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


class Webhooks:
    def __init__(self, client: BitbucketClient, settings: Settings, out: Callable[[str], None]) -> None:
        self._client = client
        self._settings = settings
        self._base = settings.primary.url
        self._out = out

    async def _values(self, url: URL) -> list[dict[str, Any]]:
        return [v for v in await self._client.get_all(url, self._settings.primary) if isinstance(v, dict)]

    async def projects(self) -> list[str]:
        url = URL(self._base.rstrip("/") + "/rest/api/latest/projects")
        return [str(p["key"]) for p in await self._values(url) if isinstance(p.get("key"), str)]

    async def _repositories(self, project: str) -> list[str]:
        url = URL(self._base.rstrip("/") + "/rest/api/latest/projects") / project / "repos"
        return [str(r["slug"]) for r in await self._values(url) if isinstance(r.get("slug"), str)]

    async def project_webhooks_carry_mirror_events(self) -> bool:
        """What ``rest/capabilities`` says; when it says nothing, try (Bitbucket refuses an unknown event)."""
        try:
            capabilities = await self._client.get_json(URL(self._base.rstrip("/") + "/rest/capabilities"),
                                                       self._settings.primary)  # fmt: skip
        except FetchError:
            return True
        webhooks = capabilities.get("capabilities", {}).get("webhooks") if isinstance(capabilities, dict) else None
        if not isinstance(webhooks, str):
            return True
        try:
            listed = await self._client.get_json(URL(webhooks), self._settings.primary)
        except FetchError:
            return True
        events = listed.get("projectEvents", listed.get("events")) if isinstance(listed, dict) else None
        return not isinstance(events, list) or EVENTS[1] in events

    def _wanted(self, url: str, secret: str) -> dict[str, Any]:
        return {
            "name": NAME,
            "url": url,
            "events": list(EVENTS),
            "active": True,
            "configuration": {"secret": secret},
            "sslVerificationRequired": True,
        }

    async def _put(self, scope: Scope, url: str, secret: str, dry_run: bool) -> str:
        """Create or update the webhook of ``scope`` for ``url``; what it did."""
        existing = next((w for w in await self._values(scope.path(self._base)) if w.get("url") == url), None)
        wanted = self._wanted(url, secret)
        # An existing one is updated every time: its secret cannot be read back to compare, and setting the same
        # state again changes nothing.
        verb = "updated" if existing is not None else "created"
        if dry_run:
            return f"would be {verb}"
        if existing is not None:
            target = scope.path(self._base) / str(existing.get("id"))
            await self._client.send_json("PUT", target, self._settings.primary, wanted)
        else:
            await self._client.send_json("POST", scope.path(self._base), self._settings.primary, wanted)
        return verb

    async def apply(self, projects: list[str], urls: list[str], dry_run: bool) -> None:
        config = self._settings.webhooks
        if config.secret_file is None:
            raise SetupError("webhooks.secret_file: set it first (the webhooks are signed with that secret)")
        secret = read_secret_file(config.secret_file).get_secret_value()
        at_project = await self.project_webhooks_carry_mirror_events()
        for project in projects:
            for url in urls:
                if at_project:
                    try:
                        verb = await self._put(Scope(project), url, secret, dry_run)
                        self._out(f"{project}: project webhook {verb} for {url} ({', '.join(EVENTS)})")
                        continue
                    except FetchError as exc:
                        if exc.status != 400:
                            raise
                        self._out(f"{project}: a project webhook cannot carry {EVENTS[1]}; per repository instead")
                for slug in await self._repositories(project):
                    verb = await self._put(Scope(project, slug), url, secret, dry_run)
                    self._out(f"{project}/{slug}: repository webhook {verb} for {url} ({', '.join(EVENTS)})")

    async def statistics(self, projects: list[str]) -> list[Delivery]:
        """The exporter's webhooks (by name) on each project and its repositories, with their statistics summary."""
        found = []
        for project in projects:
            scopes = [Scope(project)]
            scopes += [Scope(project, slug) for slug in await self._repositories(project)]
            for scope in scopes:
                for hook in await self._values(scope.path(self._base)):
                    if hook.get("name") != NAME:
                        continue
                    summary_url = scope.path(self._base) / str(hook.get("id")) / "statistics" / "summary"
                    try:
                        summary = await self._client.get_json(summary_url, self._settings.primary)
                    except FetchError as exc:
                        found.append(Delivery(str(scope), str(hook.get("url")), None, exc.reason))
                        continue
                    found.append(
                        Delivery(str(scope), str(hook.get("url")), summary if isinstance(summary, dict) else {})
                    )
        return found

    async def status(self, projects: list[str]) -> None:
        for delivery in await self.statistics(projects):
            if delivery.summary is None:
                self._out(f"{delivery.scope}: {delivery.url}: statistics unavailable ({delivery.problem})")
            else:
                self._out(f"{delivery.scope}: {delivery.url}: {describe_summary(delivery.summary)}")


@dataclass(frozen=True)
class Delivery:
    """One of the exporter's webhooks and what Bitbucket says of its deliveries."""

    scope: str
    url: str
    summary: dict[str, Any] | None
    problem: str = ""

    def last(self, outcome: str) -> float | None:
        """When the last delivery with ``outcome`` (lastSuccess, lastFailure, lastError) started, Unix seconds."""
        invocation = (self.summary or {}).get(outcome)
        start = invocation.get("start", invocation.get("finish")) if isinstance(invocation, dict) else None
        if isinstance(start, int | float) and not isinstance(start, bool):
            return start / 1000 if start > 1e11 else float(start)
        return None


def describe_summary(summary: dict[str, Any]) -> str:
    """Bitbucket's statistics summary (RestInvocationHistory; its fields are not in the spec: read tolerantly)."""
    delivery = Delivery("", "", summary)
    counts = summary.get("counts") if isinstance(summary.get("counts"), dict) else {}

    def when(outcome: str) -> str:
        at = delivery.last(outcome)
        return "never" if at is None else datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")

    parts = [
        f"last success {when('lastSuccess')}",
        f"last failure {when('lastFailure')}",
        f"last error {when('lastError')}",
    ]
    if counts:
        parts.append(", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return "; ".join(parts)
