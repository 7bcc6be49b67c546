"""HTTP basic auth against bcrypt hashes, for the optional web config.

bcrypt is slow on purpose (a quarter of a second at cost 12), and Prometheus sends the same credentials every
scrape: a successful check is remembered (by a SHA-256 of user, password and hash, never the password itself),
checks run off the event loop, and simultaneous checks of the same credentials share one bcrypt run.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from collections import OrderedDict

import bcrypt

# Compared against when the user is unknown, so a wrong username costs as long as a wrong password.
_DUMMY_HASH = bcrypt.hashpw(b"no such user", bcrypt.gensalt(rounds=10))
REMEMBERED = 64


def _matches(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
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


class BasicAuth:
    def __init__(self, users: dict[str, str]) -> None:
        self._users = {user: hashed.encode() for user, hashed in users.items()}
        self._good: OrderedDict[bytes, None] = OrderedDict()
        self._running: dict[bytes, asyncio.Future[bool]] = {}

    @property
    def enabled(self) -> bool:
        return bool(self._users)

    def _key(self, user: str, password: str) -> tuple[bytes | None, bytes]:
        hashed = self._users.get(user)
        return hashed, hashlib.sha256(b"\0".join((user.encode(), password.encode(), hashed or b""))).digest()

    def remembers(self, header: str) -> bool:
        """Whether these credentials were checked and found good lately; never runs bcrypt, so any thread may ask
        (the scrape threads: exporter/web/scrape_thread.py)."""
        credentials = parse_basic(header)
        if credentials is None:
            return False
        hashed, key = self._key(*credentials)
        return hashed is not None and key in self._good

    async def allows(self, header: str | None) -> bool:
        credentials = parse_basic(header) if header else None
        if credentials is None:
            return False
        user, password = credentials
        hashed, key = self._key(user, password)
        if hashed is not None and key in self._good:
            self._good.move_to_end(key)
            return True
        running = self._running.get(key)
        if running is None:
            loop = asyncio.get_running_loop()
            check = loop.run_in_executor(None, _matches, password.encode(), hashed or _DUMMY_HASH)
            running = self._running[key] = asyncio.ensure_future(check)
            running.add_done_callback(lambda _: self._running.pop(key, None))
        ok = await asyncio.shield(running) and hashed is not None
        if ok:
            self._good[key] = None
            while len(self._good) > REMEMBERED:
                self._good.popitem(last=False)
        return ok
