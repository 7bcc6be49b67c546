"""aiohttp's request handler with a deadline for a request's head.

aiohttp closes a connection that stays idle past its keep-alive timeout, but a client that sends part of a request
head and then trickles the rest (or nothing) holds the connection until then: 75 s here, an hour by aiohttp's
default. This handler gives a head ``HEAD_SECONDS`` from its first byte to arrive whole, then closes the connection
and counts a ``head_timeout`` refusal. (A webhook body has its own deadline in the receiver; no other handler reads
a body.)

It leans on two attributes of aiohttp's RequestHandler that are not public API: ``_request_count`` (requests parsed
so far) and ``_request_in_progress``; tests/system/test_connections.py pins the behaviour, so an aiohttp that
changes them fails there, not in production.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from exporter.web.refusals import HEAD_TIMEOUT, Refusals

HEAD_SECONDS = 10.0


class BoundedRequestHandler(RequestHandler):
    """``open_connections`` holds every handler from its creation (asyncio creates a batch of connections before any is
    connected, so aiohttp's own list of connections lags behind the accepts) until its connection is lost, or until
    it is garbage when it never connected (a failed TLS handshake): the connection cap counts it."""

    __slots__ = ("__weakref__", "_head_seconds", "_head_timer", "_open", "_refusals")

    def __init__(
        self,
        manager: web.Server,
        *,
        refusals: Refusals,
        head_seconds: float,
        open_connections: weakref.WeakSet[BoundedRequestHandler],
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._refusals = refusals
        self._head_seconds = head_seconds
        self._open = open_connections
        open_connections.add(self)

    def data_received(self, data: bytes) -> None:
        parsed = self._request_count
        super().data_received(data)
        if self._request_count > parsed:
            self._stop_head_timer()  # a whole head arrived
        elif data and self._head_timer is None and not self._request_in_progress:
            # Bytes of a head that is not whole yet: it has HEAD_SECONDS from now.
            self._head_timer = asyncio.get_running_loop().call_later(self._head_seconds, self._head_too_slow)

    def _head_too_slow(self) -> None:
        self._head_timer = None
        self._refusals.count(HEAD_TIMEOUT, f"a request head not whole within {self._head_seconds:g} s")
        if self.transport is not None:
            self.transport.close()
        self.force_close()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_timer()
        self._open.discard(self)
        super().connection_lost(exc)
