"""HTTP basic auth against bcrypt hashes, for the optional web config.

bcrypt is slow on purpose (a quarter of a second at cost 12), and Prometheus sends the same credentials every
scrape: a successful check is remembered (by a SHA-256 of user, password and hash, never the password itself; kept
across reloads, since the hash is part of the key), and simultaneous checks of the same credentials share one run.

A flood of wrong passwords must starve nothing:
- checks run on a small executor of their own (``CHECKERS`` threads), never the loop's default executor, which
  aiohttp uses for DNS: polls to Bitbucket by host name go on;
- at most ``MAX_WAITING`` checks wait or run at once; past that a request is answered 429 with ``Retry-After`` at
  once, without bcrypt;
- a client address whose checks failed ``FAILURES_BEFORE_BACKOFF`` times in a row is answered 429 at once for a
  while (1 s, doubling up to ``MAX_BACKOFF_SECONDS``) unless it brings credentials already remembered;
- an unknown user is compared against a dummy hash of the configured hashes' cost, so a wrong username costs as
  long as a wrong password (usernames cannot be guessed by timing).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import math
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import bcrypt

REMEMBERED = 64
CHECKERS = 2
MAX_WAITING = 4
FAILURES_BEFORE_BACKOFF = 5
MAX_BACKOFF_SECONDS = 60.0
# Client addresses whose failures are remembered at most (the oldest forgotten first).
MAX_ADDRESSES = 10_000
# bcrypt's cost: 2^cost rounds. 14 is about 1.2 s a check on a server core, already more than a scrape should wait.
MAX_COST = 14
BCRYPT_HASH = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
_dummies: dict[int, bytes] = {}
_dummies_lock = threading.Lock()


def _checkers() -> ThreadPoolExecutor:
    """The executor bcrypt runs on: its own, so the loop's default executor (DNS) never waits behind it."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=CHECKERS, thread_name_prefix="bme-bcrypt")
        return _executor


def cost_of(hashed: str | bytes) -> int:
    """The cost of a bcrypt hash; ValueError when it is not one."""
    text = hashed.decode("ascii", "replace") if isinstance(hashed, bytes) else hashed
    match = BCRYPT_HASH.fullmatch(text)
    if match is None:
        raise ValueError("not a bcrypt hash ($2a$, $2b$ or $2y$, 60 characters)")
    return int(match.group(1))


def _dummy(cost: int) -> bytes:
    """A hash of the given cost that no password matches, made once per cost (on a checker thread: it costs as
    much as a check)."""
    with _dummies_lock:
        if cost not in _dummies:
            _dummies[cost] = bcrypt.hashpw(b"no such user", bcrypt.gensalt(rounds=cost))
        return _dummies[cost]


def _matches(password: bytes, hashed: bytes | None, cost: int) -> bool:
    try:
        return bcrypt.checkpw(password, hashed if hashed is not None else _dummy(cost))
    except ValueError:  # bcrypt 5 refuses passwords over 72 bytes, and a malformed hash
        return False


def parse_basic(header: str) -> tuple[str, str] | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


@dataclass
class _Failures:
    count: int = 0
    until: float = 0.0


@dataclass(frozen=True)
class Verdict:
    """Whether a request may pass; when it may not because of load or its address's failures, after how long it may
    try again (429 with Retry-After), else None (401)."""

    allowed: bool
    retry_after: float | None = None


class BasicAuth:
    def __init__(self, users: dict[str, str], previous: BasicAuth | None = None) -> None:
        self._users = {user: hashed.encode() for user, hashed in users.items()}
        # The dearest configured cost: an unknown user's check costs as much as the slowest known one's.
        self._cost = max((cost_of(hashed) for hashed in users.values()), default=4)
        # Remembered checks are keyed by the hash too: those of a previous configuration stay valid.
        self._good: OrderedDict[bytes, None] = OrderedDict(previous._good) if previous is not None else OrderedDict()
        self._running: dict[bytes, asyncio.Future[bool]] = {}
        self._failures: OrderedDict[str, _Failures] = (
            OrderedDict(previous._failures) if previous is not None else OrderedDict()
        )
        self.refused_busy = 0  # answered 429 because MAX_WAITING checks were under way
        self.refused_backoff = 0  # answered 429 because the address kept failing

    @property
    def enabled(self) -> bool:
        return bool(self._users)

    def _key(self, user: str, password: str) -> tuple[bytes | None, bytes]:
        hashed = self._users.get(user)
        return hashed, hashlib.sha256(b"\0".join((user.encode(), password.encode(), hashed or b""))).digest()

    async def allows(self, header: str | None) -> bool:
        return (await self.check(header, None)).allowed

    async def check(self, header: str | None, client: str | None, now: float | None = None) -> Verdict:
        credentials = parse_basic(header) if header else None
        if credentials is None:
            return Verdict(False)
        user, password = credentials
        hashed, key = self._key(user, password)
        if hashed is not None and key in self._good:
            self._good.move_to_end(key)
            return Verdict(True)
        now = time.monotonic() if now is None else now
        failures = self._failures.get(client) if client is not None else None
        if failures is not None and now < failures.until:
            self.refused_backoff += 1
            return Verdict(False, failures.until - now)
        running = self._running.get(key)
        if running is None:
            if len(self._running) >= MAX_WAITING:
                self.refused_busy += 1
                return Verdict(False, 1.0)
            loop = asyncio.get_running_loop()
            check = loop.run_in_executor(_checkers(), _matches, password.encode(), hashed, self._cost)
            running = self._running[key] = asyncio.ensure_future(check)
            running.add_done_callback(lambda _: self._running.pop(key, None))
        ok = await asyncio.shield(running) and hashed is not None
        if ok:
            self._good[key] = None
            while len(self._good) > REMEMBERED:
                self._good.popitem(last=False)
        if client is not None:
            self._count(client, ok, time.monotonic())
        return Verdict(ok)

    def _count(self, client: str, ok: bool, now: float) -> None:
        if ok:
            self._failures.pop(client, None)
            return
        failures = self._failures.setdefault(client, _Failures())
        self._failures.move_to_end(client)
        failures.count += 1
        if failures.count >= FAILURES_BEFORE_BACKOFF:
            doublings = failures.count - FAILURES_BEFORE_BACKOFF
            failures.until = now + min(MAX_BACKOFF_SECONDS, 2.0 ** min(doublings, 16))
        while len(self._failures) > MAX_ADDRESSES:
            self._failures.popitem(last=False)


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
