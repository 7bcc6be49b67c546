"""``POST`` of Bitbucket's webhooks: checked (size, signature, JSON), then handed to the matching book.

Bitbucket sends ``X-Event-Key``, ``X-Request-Id`` and, with a secret, ``X-Hub-Signature: sha256=<hex HMAC-SHA256 of
the raw body>``. A request the receiver refuses is answered at once and counted in
``bitbucket_mirror_webhook_requests_total{event,outcome}``; nothing here waits on Bitbucket or blocks ``/metrics``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Any

from aiohttp import web

from exporter.secret_files import prepare, read_secret_file
from exporter.webhooks.config import WebhooksConfig
from exporter.webhooks.matching import Book, Change

log = logging.getLogger("exporter.webhooks")

PUSH = "repo:refs_changed"
SYNCED = "mirror:repo_synchronized"
PING = "diagnostics:ping"
KNOWN_EVENTS = (PUSH, SYNCED, PING)

# Outcomes, the `outcome` label.
ACCEPTED = "accepted"
REPLAYED = "replayed"
UNKNOWN_EVENT = "unknown_event"
BAD_SIGNATURE = "bad_signature"
TOO_LARGE = "too_large"
MALFORMED = "malformed"
NO_SECRET = "secret_unreadable"
TOO_SLOW = "too_slow"


# How far an event's date may be from the exporter's clock: Bitbucket sends events as they happen.
MAX_DATE_SKEW_SECONDS = 86400.0
# A body must arrive within this long: a client that trickles it holds a connection and a task for nothing.
BODY_SECONDS = 10.0


class Malformed(ValueError):
    """A body that is JSON but not the documented shape."""


def parse_date(value: Any, now: float | None = None) -> float:
    """An event's ``date``: ``2019-03-01T10:37:14+0100`` as documented (whole seconds, offset without a colon), an ISO
    date with a colon, or epoch milliseconds. With ``now``, a date more than a day from it is refused (a signed but
    hostile or broken event must not poison the latency histogram's sum)."""
    when = _date(value)
    if not math.isfinite(when) or (now is not None and abs(when - now) > MAX_DATE_SKEW_SECONDS):
        raise Malformed(f"date {str(value)[:40]!r} is more than a day from now")
    return when


def _date(value: Any) -> float:
    if isinstance(value, bool) or value is None:
        raise Malformed("no date")
    if isinstance(value, int | float):
        try:
            return float(value) / 1000.0 if value > 1e11 else float(value)
        except OverflowError:
            raise Malformed("date out of range") from None
    if isinstance(value, str):
        # fromisoformat first: it reads the documented form as well (Python 3.11+), in C, where strptime took 7% of
        # the event loop in a burst of 1,000 deliveries a second; strptime still reads what it alone accepts.
        for parse in (datetime.fromisoformat, lambda t: datetime.strptime(t, "%Y-%m-%dT%H:%M:%S%z")):
            try:
                parsed = parse(value.strip())
            except ValueError:
                continue
            if parsed.tzinfo is not None:
                return parsed.timestamp()
    raise Malformed(f"date {str(value)[:40]!r} is not a date")


async def _read_whole(request: web.Request, cap: int) -> bytes | None:
    """The whole body, however it arrives (split into many segments, chunked, slowly); None past ``cap`` bytes.
    ``content.read(n)`` would return only what is buffered so far, and a body checked half-read fails its signature.
    """
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > cap:
            return None
    return bytes(body)


def _repository(body: dict[str, Any]) -> tuple[str, str | None, str | None]:
    repo = body.get("repository")
    if not isinstance(repo, dict) or isinstance(repo.get("id"), bool) or not isinstance(repo.get("id"), int | str):
        raise Malformed("no repository id")
    project: dict[str, Any] = repo["project"] if isinstance(repo.get("project"), dict) else {}
    key, slug = project.get("key"), repo.get("slug")
    return str(repo["id"]), key if isinstance(key, str) else None, slug if isinstance(slug, str) else None


def _changes(body: dict[str, Any]) -> list[Change]:
    changes = body.get("changes", [])
    if not isinstance(changes, list):
        raise Malformed("changes is not a list")
    found = []
    for change in changes:
        if not isinstance(change, dict) or not isinstance(change.get("toHash"), str):
            raise Malformed("a change without toHash")
        ref = change.get("refId") or (change.get("ref") or {}).get("id") or ""
        before = change.get("fromHash")
        found.append(Change(str(ref), change["toHash"].lower(), before.lower() if isinstance(before, str) else ""))
    return found


class Receiver:
    """Takes deliveries for one exporter; ``mirror_label`` turns the event's mirrorServer (id, name) into the
    configured mirror's name; ``config`` returns the current webhooks block (a reload replaces it)."""

    def __init__(
        self,
        config: Callable[[], WebhooksConfig],
        book: Book,
        mirror_label: Callable[[str, str | None], str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self.book = book
        self._mirror_label = mirror_label
        self._clock = clock
        self.requests: dict[tuple[str, str], int] = {}
        self.last_received: dict[str, float] = {}
        # (project key, slug) -> repository id, as the events name them: the CI gate asks by key and slug.
        self.repositories: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._failing: str | None = None

    def _count(self, event: str, outcome: str) -> web.Response:
        label = event if event in KNOWN_EVENTS else "other"
        self.requests[(label, outcome)] = self.requests.get((label, outcome), 0) + 1
        if outcome != ACCEPTED and outcome != REPLAYED and self._failing != outcome:
            log.warning("webhook refused", extra={"event": label, "outcome": outcome})
        self._failing = None if outcome in (ACCEPTED, REPLAYED) else outcome
        status = {
            ACCEPTED: 200,
            REPLAYED: 200,
            UNKNOWN_EVENT: 202,
            BAD_SIGNATURE: 401,
            TOO_LARGE: 413,
            TOO_SLOW: 408,
            MALFORMED: 400,
            NO_SECRET: 503,
        }[outcome]
        return web.Response(status=status, text=outcome + "\n")

    def _signed(self, config: WebhooksConfig, body: bytes, header: str | None) -> bool | None:
        """True or False; None when the secret cannot be read now."""
        if config.secret_file is None:
            return True  # allow_unsigned
        if header is None:
            return False  # no signature at all: refused without touching the secret file
        try:
            secret = read_secret_file(config.secret_file).get_secret_value()
        except ValueError:
            return None
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return header is not None and hmac.compare_digest(expected.encode(), header.strip().lower().encode())

    async def handle(self, request: web.Request) -> web.Response:
        config = self._config()
        event = request.headers.get("X-Event-Key", "")
        if request.content_length is not None and request.content_length > config.max_body_bytes:
            return self._count(event, TOO_LARGE)
        try:
            async with asyncio.timeout(BODY_SECONDS):
                body = await _read_whole(request, config.max_body_bytes)
        except TimeoutError:
            return self._count(event, TOO_SLOW)
        if body is None:
            return self._count(event, TOO_LARGE)
        signature = request.headers.get("X-Hub-Signature")
        if signature is not None:
            await prepare(config.secret_file)  # the file read off the event loop
        signed = self._signed(config, body, signature)
        if signed is None:
            return self._count(event, NO_SECRET)
        if not signed:
            return self._count(event, BAD_SIGNATURE)
        if event not in KNOWN_EVENTS:
            return self._count(event, UNKNOWN_EVENT)
        now = self._clock()
        if event == PING:
            self.last_received[event] = now
            return self._count(event, ACCEPTED)
        try:
            document = json.loads(body)
            if not isinstance(document, dict):
                raise Malformed("not an object")
            # X-Request-Id is not signed: a replay is recognised by what was signed, the body itself.
            replayed = self.book.replayed(hashlib.sha256(body).hexdigest(), now)
            if not replayed:
                self._take(event, document, now)
        except (ValueError, UnicodeDecodeError, RecursionError, OverflowError):  # broken, hostile, or Malformed
            return self._count(event, MALFORMED)
        self.last_received[event] = now
        return self._count(event, REPLAYED if replayed else ACCEPTED)

    def _take(self, event: str, body: dict[str, Any], now: float) -> None:
        repo_id, key, slug = _repository(body)
        changes = _changes(body)
        when = parse_date(body.get("date"), now)
        if key is not None and slug is not None:
            self.repositories[(key, slug)] = repo_id
            self.repositories.move_to_end((key, slug))
            while len(self.repositories) > self.book.max_pending:
                self.repositories.popitem(last=False)
        if event == PUSH:
            self.book.pushed(repo_id, changes, when, now)
            return
        server = body.get("mirrorServer")
        if not isinstance(server, dict) or not isinstance(server.get("id"), int | str):
            raise Malformed("no mirrorServer id")
        name = server.get("name") if isinstance(server.get("name"), str) else None
        mirror = self._mirror_label(str(server["id"]), name)
        sync_type = body.get("syncType")
        sync = sync_type.lower() if isinstance(sync_type, str) and sync_type else "unknown"
        limit_exceeded = body.get("refLimitExceeded") is True
        self.book.synchronized(mirror, repo_id, changes, limit_exceeded, sync, when)
