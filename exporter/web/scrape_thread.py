"""Scrapes of /metrics served by threads of their own, so they never wait for the event loop.

At 100k repositories x 3 mirrors x 3 nodes the loop is busy for seconds at a time (decoding 900,000 listing rows,
comparing them), and a scrape queued behind that work waited 40 ms and more (bench/README.md, "Node by node"). So the
listening sockets are accepted here: a connection whose request is ``GET /metrics`` (with credentials already
checked once, when basic auth is on) is answered by its own thread from the latest rendering
(exporter/web/exposition.py); any other request is handed, unread, to the aiohttp server on the event loop, which
serves it as before. A thread waits for the interpreter lock at least the switch interval at each step, so that is
lowered to a quarter of a millisecond once this starts.

The request is peeked at (MSG_PEEK), never consumed, until it is known to be a scrape: a hand-over loses no byte.
With TLS every connection is handed over: the handshake and everything after it stay in aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import errno
import logging
import select
import selectors
import socket
import ssl
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.exposition import choose_encoder

from exporter.web.auth import BasicAuth
from exporter.web.exposition import Exposition, Rendering
from exporter.web.refusals import ERROR, OUT_OF_FILE_DESCRIPTORS, TOO_MANY_CONNECTIONS, Refusals

log = logging.getLogger("exporter")

# A request head longer than this (or arriving in pieces) goes to aiohttp, which knows what to say to it.
MAX_HEAD = 8192
KEEP_ALIVE_SECONDS = 75.0
# Connections served by their own thread at once; more than that are served on the event loop.
MAX_THREADS = 32
# How long a scrape waits for the event loop to render when the latest rendering is too old to serve.
RENDER_WAIT_SECONDS = 10.0
SWITCH_INTERVAL_SECONDS = 0.00025
STOP_SECONDS = 2.0
SEND_BUFFER_BYTES = 1 << 20
MAX_ACCEPT_HEADERS = 64
# Scrapes of one burst (an HA pair of Prometheus servers, several teams' ones) this close together share one answer,
# so a burst costs one writing of the lag lines: a lag is then at most this much short, against a resolution of the poll
# interval.
SHARED_BODY_SECONDS = 0.01


@dataclass(frozen=True)
class Head:
    method: bytes
    path: bytes
    version: bytes
    headers: dict[bytes, bytes]
    size: int

    @property
    def keep_alive(self) -> bool:
        return self.version == b"HTTP/1.1" and self.headers.get(b"connection", b"").lower() != b"close"


def parse_head(data: bytes) -> Head | None:
    """The request line and headers of a complete request head at the start of ``data``; None for anything this
    module leaves to aiohttp (incomplete, malformed, repeated headers)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    line, *fields = data[:end].split(b"\r\n")
    parts = line.split(b" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    headers: dict[bytes, bytes] = {}
    for field in fields:
        name, sep, value = field.partition(b":")
        key = name.lower()
        if not sep or not name or name != name.strip() or key in headers:
            return None
        headers[key] = value.strip()
    return Head(method, target.partition(b"?")[0], version, headers, end + 4)


def is_scrape(head: Head, auth: BasicAuth) -> bool:
    """A plain scrape of /metrics: no body, nothing to negotiate, and credentials already checked once."""
    headers = head.headers
    return (
        head.method == b"GET"
        and head.path == b"/metrics"
        and head.version in (b"HTTP/1.1", b"HTTP/1.0")
        and headers.get(b"content-length", b"0") == b"0"
        and not {b"transfer-encoding", b"expect", b"upgrade"} & headers.keys()
        and (not auth.enabled or auth.remembers(headers.get(b"authorization", b"").decode("latin-1")))
    )


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound and listening sockets for every address of ``host``, as asyncio's create_server makes them (with port
    0, every address on the port the first one got)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(128)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _response(status: bytes, content_type: bytes, body: bytes, keep_alive: bool) -> bytes:
    head = [
        b"HTTP/1.1 " + status,
        b"Content-Type: " + content_type,
        b"Content-Length: " + str(len(body)).encode(),
        b"Date: " + email.utils.formatdate(usegmt=True).encode(),
    ]
    if not keep_alive:
        head.append(b"Connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


@dataclass(frozen=True)
class ConnectionLimits:
    """At most ``max_connections`` open at once (the threads' and ``loop_connections()``, aiohttp's); refusals are
    counted in ``refusals``."""

    max_connections: int
    loop_connections: Callable[[], int]
    refusals: Refusals


# Errors of accept() that mean the process (or system) is out of descriptors or memory: wait, do not spin.
_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
FIRST_ACCEPT_PAUSE_SECONDS = 0.05
MAX_ACCEPT_PAUSE_SECONDS = 1.0


class ScrapeThreads:
    """Accepts on ``sockets``; serves scrapes from ``exposition`` on threads; hands every other connection to
    ``adopt`` on ``loop`` (or every connection, with ``tls``). ``auth`` is read at each request (a reload replaces
    it)."""

    def __init__(
        self,
        sockets: list[socket.socket],
        exposition: Exposition,
        auth: Callable[[], BasicAuth],
        loop: asyncio.AbstractEventLoop,
        adopt: Callable[[socket.socket], None],
        tls: ssl.SSLContext | None = None,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self._sockets = sockets
        self._limits = limits or ConnectionLimits(1_000_000, lambda: 0, Refusals())
        self._exposition = exposition
        self._auth = auth
        self._loop = loop
        self._adopt = adopt
        self._tls = tls
        self._lock = threading.Lock()
        self._serving: dict[socket.socket, threading.Thread] = {}
        # Connections handed to the loop and not yet taken by aiohttp (counted against the connection limit).
        self._handing_over = 0
        self._stopping = False
        # The latest answer: (rendering, the time its lag lines were written at, keep-alive, response bytes).
        self._shared: tuple[Rendering, float, bool, bytes] | None = None
        # Accept header -> (encoder, content type): parsing it is the costliest step left of an answer.
        self._encoders: dict[bytes, tuple[Callable[..., bytes], str]] = {}
        self._wake_read, self._wake_write = socket.socketpair()
        self._acceptor = threading.Thread(target=self._accept, name="scrape-acceptor", daemon=True)
        # Counted for tests and the benchmark: which path served what.
        self.served_here = 0
        self.handed_over = 0

    @property
    def port(self) -> int:
        port: int = self._sockets[0].getsockname()[1]
        return port

    def start(self) -> None:
        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        self._acceptor.start()

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_write.send(b"x")
        self._acceptor.join(STOP_SECONDS)
        with self._lock:
            serving = list(self._serving.items())
        for conn, _ in serving:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # wakes its thread from recv
        for _, thread in serving:
            thread.join(STOP_SECONDS)
        for sock in (*self._sockets, self._wake_read, self._wake_write):
            sock.close()

    def _accept(self) -> None:
        with selectors.DefaultSelector() as selector:
            for sock in self._sockets:
                selector.register(sock, selectors.EVENT_READ)
            selector.register(self._wake_read, selectors.EVENT_READ)
            pause = 0.0
            while not self._stopping:
                if pause and self._wait(pause):
                    return
                for key, _ in selector.select():
                    if key.fileobj is self._wake_read:
                        return
                    assert isinstance(key.fileobj, socket.socket)
                    try:
                        conn, _ = key.fileobj.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as exc:
                        if exc.errno in _EXHAUSTED:
                            # Out of descriptors: the listening socket stays readable, so accepting again at once
                            # would spin (and log) as fast as the CPU goes. Pause, longer each time, until one fits.
                            pause = min(MAX_ACCEPT_PAUSE_SECONDS, max(FIRST_ACCEPT_PAUSE_SECONDS, pause * 2))
                            self._limits.refusals.count(OUT_OF_FILE_DESCRIPTORS, exc.strerror or "")
                            break
                        self._limits.refusals.count(ERROR, type(exc).__name__)
                        continue
                    pause = 0.0
                    if self.open_connections() >= self._limits.max_connections:
                        self._limits.refusals.count(TOO_MANY_CONNECTIONS, f"{self._limits.max_connections} open")
                        conn.close()
                        continue
                    try:
                        self._take(conn)
                    except Exception:  # a bug, or no thread to be had: never stop accepting for it
                        log.exception("taking a connection failed")
                        conn.close()

    def open_connections(self) -> int:
        """Served by threads, on their way to the loop, and held by aiohttp."""
        with self._lock:
            here = len(self._serving) + self._handing_over
        return here + self._limits.loop_connections()

    def adopted(self) -> None:
        """The loop took over a connection handed to it (or dropped it): it is counted by aiohttp from now on."""
        with self._lock:
            self._handing_over -= 1

    def _wait(self, seconds: float) -> bool:
        """Sleep ``seconds``, or less when stopped; whether it was stopped."""
        readable, _, _ = select.select([self._wake_read], [], [], seconds)
        return bool(readable) or self._stopping

    def _take(self, conn: socket.socket) -> None:
        with self._lock:
            busy = self._tls is not None or len(self._serving) >= MAX_THREADS
            if not busy:
                thread = threading.Thread(target=self._serve, args=(conn,), name="scrape", daemon=True)
                self._serving[conn] = thread
        if busy:
            self._hand_over(conn)
            return
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: the event loop serves it
            with self._lock:
                del self._serving[conn]
            self._hand_over(conn)

    def _hand_over(self, conn: socket.socket) -> None:
        self.handed_over += 1  # before the hand-over, for the same reason
        with self._lock:
            self._handing_over += 1
        conn.setblocking(False)
        try:
            self._loop.call_soon_threadsafe(self._adopt, conn)
        except RuntimeError:  # the loop has closed: the exporter is stopping
            conn.close()

    def _serve(self, conn: socket.socket) -> None:
        handed = False
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Room for a whole answer in one send: each send that blocks costs a wait for the GIL afterwards.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
            conn.settimeout(KEEP_ALIVE_SECONDS)
            while not self._stopping:
                data = conn.recv(MAX_HEAD, socket.MSG_PEEK)
                if not data:
                    return
                head = parse_head(data)
                if head is None or not is_scrape(head, self._auth()):
                    handed = True
                    self._hand_over(conn)
                    return
                keep_alive = self._answer(conn, head)
                # Read only now: the answer's way out holds one wait for the GIL fewer (each socket call has one).
                conn.recv(head.size, socket.MSG_WAITALL)
                if not keep_alive:
                    return
        except OSError:  # the client went away, or was idle for KEEP_ALIVE_SECONDS, or the exporter stops
            return
        except Exception:  # a bug: this connection ends, the others go on
            log.exception("serving a scrape failed")
        finally:
            with self._lock:
                del self._serving[conn]
            if not handed:
                conn.close()

    def _answer(self, conn: socket.socket, head: Head) -> bool:
        """Sends the scrape's answer; whether the connection stays open."""
        accept = head.headers.get(b"accept", b"")
        if (chosen := self._encoders.get(accept)) is None:
            if len(self._encoders) >= MAX_ACCEPT_HEADERS:
                self._encoders.clear()
            chosen = self._encoders[accept] = choose_encoder(accept.decode("latin-1"))
        encoder, content_type = chosen
        keep_alive = head.keep_alive
        try:
            rendering = self._exposition.from_thread(content_type, encoder, RENDER_WAIT_SECONDS)
        except Exception:  # a collector's bug, logged by the event loop's own rendering (keep_fresh) once
            conn.sendall(_response(b"500 Internal Server Error", b"text/plain", b"rendering failed\n", False))
            return False
        if rendering is None:
            busy = b"the exporter did not render /metrics in time\n"
            conn.sendall(_response(b"503 Service Unavailable", b"text/plain", busy, False))
            return False
        now = self._exposition.now()
        shared = self._shared
        if (
            shared is not None
            and shared[0] is rendering
            and shared[2] == keep_alive
            and 0 <= now - shared[1] <= SHARED_BODY_SECONDS
        ):
            response = shared[3]
        else:
            response = _response(b"200 OK", content_type.encode(), rendering.body(now), keep_alive)
            self._shared = (rendering, now, keep_alive, response)
        self.served_here += 1  # before the answer: a test reads it as soon as the answer arrives
        conn.sendall(response)
        return keep_alive
