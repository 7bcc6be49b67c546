"""An async Bitbucket REST client on one aiohttp session.

Every failure becomes a FetchError (exporter/sources.py) with a short, stable ``reason`` (it is the ``reason`` label
of ``bitbucket_mirror_exporter_poll_errors_total``). Messages never contain credentials: auth travels in headers only
and configured URLs may not carry userinfo.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Generic, TypeVar

import aiohttp
import msgspec
from yarl import URL

from exporter import __version__
from exporter.config import Credentials, PollConfig, TlsConfig
from exporter.secret_files import prepare
from exporter.sources import (
    CAPTCHA,
    CONNECT_TIMEOUT,
    CONNECTION,
    CREDENTIALS,
    DNS,
    HTML_RESPONSE,
    INVALID_JSON,
    INVALID_RESPONSE,
    LOGIN_PAGE,
    PAGE_CAP,
    PAGE_LOOP,
    TIMEOUT,
    TLS,
    TOO_LARGE,
    TOO_MANY_ROWS,
    FetchError,
    http_reason,
)
from exporter.steps import starts

T = TypeVar("T")

# Rows a listing walk may bring when nothing else is known (poll.max_rows; Polling sets 10 x the primary's count).
DEFAULT_MAX_ROWS = 100_000
# A page may hold at most this many JSON objects per row asked for (a real repository row has about ten, with its
# project and links): counted in the raw bytes, so a page of a million tiny rows is refused before it is decoded.
OBJECTS_PER_ROW = 50
# Only a page larger than this per row asked for is counted (real rows are a few hundred bytes): the count costs a
# sixth of a decode, and an ordinary page, on the event loop's hot path, skips it.
BYTES_PER_ROW = 2048

# No credentials at all: ``/status`` is public, and Bitbucket 8.9.22, 8.19.12, 9.3.2 and later answer an access token
# on a path outside /rest and /scm with a 302 to the login page (Bearer) or a 401 (as a Basic password), and lock the
# account behind a CAPTCHA after a few 401s (Atlassian KB "Access tokens no longer work as expected after upgrading").
ANONYMOUS = Credentials()
# Session cookies a Bitbucket node sets: an authenticated session, never sent where no credentials may go.
SESSION_COOKIE_MARK = "SESSION"
# What Bitbucket's login layer says when it wants a person (a CAPTCHA) before it takes this account's password again.
DENIED_REASON_HEADER = "X-Authentication-Denied-Reason"


def auth_headers(credentials: Credentials) -> dict[str, str]:
    try:
        token = credentials.resolved_token()
        password = credentials.resolved_password() if token is None else None
    except ValueError as exc:
        # The message names the file and why, never its content.
        raise FetchError(CREDENTIALS, str(exc)) from None
    if token is not None:
        return {"Authorization": f"Bearer {token.get_secret_value()}"}
    if credentials.username is not None:
        secret = password.get_secret_value() if password is not None else ""
        pair = base64.b64encode(f"{credentials.username}:{secret}".encode()).decode("ascii")
        return {"Authorization": f"Basic {pair}"}
    return {}


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, float(parsedate_to_datetime(value).timestamp()) - time.time())
    except (TypeError, ValueError):
        return None


def _looks_like_html(content_type: str, body: bytes) -> bool:
    return "html" in content_type or body.lstrip()[:1] == b"<"


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FetchError(INVALID_JSON, f"response is not valid JSON ({type(exc).__name__})") from None


def decode_body(content_type: str, body: bytes, decode: Callable[[bytes], T]) -> T:
    """``decode`` (``parse_json`` or a typed page decoder) raises FetchError itself on a body it cannot read."""
    if _looks_like_html(content_type, body):
        # Typically a login page sent with status 200 by an SSO proxy or an expired session.
        raise FetchError(HTML_RESPONSE, "got an HTML page instead of JSON (a login page?)")
    return decode(body)


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a Bitbucket paged resource; the paging fields exactly as sent, judged by ``walk``. A page read as
    bytes (``decode_envelope``) has no ``values``: its ``body`` and the number of its ``row_count``."""

    values: list[T]
    is_last_page: Any = True
    next_page_start: Any = None
    limit: Any = None
    body: bytes = b""
    row_count: int | None = None

    @property
    def rows(self) -> int:
        return len(self.values) if self.row_count is None else self.row_count


class RawRows(msgspec.Struct, rename="camel"):
    """A listing page with each row's bytes as sent, undecoded (msgspec skips over them without building them)."""

    values: list[msgspec.Raw]
    is_last_page: Any = True
    next_page_start: Any = None
    limit: Any = None


raw_rows = msgspec.json.Decoder(RawRows)


def raw_page(body: bytes) -> RawRows | None:
    """The page's rows undecoded; None where the decoder proper is to say what is wrong with it (or read it the
    tolerant way)."""
    try:
        return raw_rows.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def decode_envelope(body: bytes) -> Page[bytes]:
    """A page's paging fields and row count, its rows left as bytes for a worker process (msgspec skips over them
    without building them); a page whose shape is not the usual one is read by ``parse_page``."""
    try:
        envelope = raw_rows.decode(body)
        rows = len(envelope.values)
        return Page([], envelope.is_last_page, envelope.next_page_start, envelope.limit, body, rows)
    except msgspec.ValidationError:
        page = parse_page(body)
        return Page([], page.is_last_page, page.next_page_start, page.limit, body, len(page.values))
    except msgspec.DecodeError:
        raise FetchError(INVALID_JSON, "response is not valid JSON") from None


def parse_page(body: bytes) -> Page[Any]:
    document = parse_json(body)
    if not isinstance(document, dict) or not isinstance(document.get("values"), list):
        raise FetchError(INVALID_RESPONSE, "paged response without a values list")
    return Page(
        document["values"], document.get("isLastPage", True), document.get("nextPageStart"), document.get("limit")
    )


# How fast a host's clock may drift from the exporter's: 100 ppm, ten times what NTP allows a synchronised clock and
# above a free-running quartz's. A kept bound on the offset widens by this much a second, so readings may move it.
CLOCK_DRIFT_RATE = 1e-4


@dataclass(frozen=True)
class ClockReading:
    """How far a host's clock is ahead of the exporter's, from the Date headers of its answers: the middle of the
    offsets those answers allow, and how far either side of it the truth may lie."""

    offset_seconds: float
    # When it was last read, on the exporter's clock: a reading is fresh like any value.
    at: float
    # Half the width of the offsets still possible. One answer alone allows a second and its request's round trip (Date
    # has whole seconds, cut down); answers whose Date ticked at different moments narrow it (narrowed()).
    half_width_seconds: float = 0.5

    @classmethod
    def between(cls, earliest: float, latest: float, at: float) -> ClockReading:
        """The offsets from ``earliest`` to ``latest``, read at ``at``."""
        return cls((earliest + latest) / 2, at, (latest - earliest) / 2)

    @property
    def earliest(self) -> float:
        return self.offset_seconds - self.half_width_seconds

    @property
    def latest(self) -> float:
        return self.offset_seconds + self.half_width_seconds

    def contains(self, offset: float) -> bool:
        return self.earliest <= offset <= self.latest

    def narrowed(self, reading: ClockReading) -> ClockReading:
        """This reading and a later one taken together: the offsets both allow (this one's widened by the drift
        possible since), as NTP intersects its samples. Where none is common the host's clock was stepped, and the
        later reading alone is the truth."""
        older, newer = (self, reading) if self.at <= reading.at else (reading, self)
        drift = (newer.at - older.at) * CLOCK_DRIFT_RATE
        earliest = max(older.earliest - drift, newer.earliest)
        latest = min(older.latest + drift, newer.latest)
        return newer if earliest > latest else ClockReading.between(earliest, latest, newer.at)


def clock_reading(date_header: str | None, sent: float, received: float) -> ClockReading | None:
    """The offsets one answer allows. ``Date`` has whole seconds, cut down (RFC 9110), so the server's clock read
    [Date, Date + 1) when it answered, at some moment between our sending and receiving: its offset lies in
    [Date - received, Date + 1 - sent]. None if unreadable."""
    if not date_header:
        return None
    server = _date_seconds(date_header)
    if server is None:
        return None
    return ClockReading.between(server - received, server + 1.0 - sent, received)


@functools.lru_cache(maxsize=64)
def _date_seconds(date_header: str) -> float | None:
    """A Date header as epoch seconds; cached, since it changes once a second while pages arrive by the hundred."""
    try:
        return parsedate_to_datetime(date_header).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def origin(url: URL | str) -> str:
    parsed = URL(url) if isinstance(url, str) else url
    return f"{parsed.scheme}://{parsed.host}:{parsed.port}"


@dataclass
class Affinity:
    """The cookies a load balancer set, sent back on every later request to the same base URL.

    Node-local listings (repoSyncStatus) read through a farm's load balancer must come from one node for a whole
    walk, and from the same node cycle after cycle, or counts mix nodes and flap. Atlassian's chart configures
    nginx-ingress with cookie affinity (``persistent``), so keeping its cookie pins the exporter to one node until that
    node leaves. Kept per mirror, not in the session's jar: cookies do not tell ports apart, and aiohttp's jar drops
    cookies of IP-address hosts."""

    cookies: dict[str, str] = field(default_factory=dict)

    def header(self, anonymous: bool = False) -> dict[str, str]:
        """The cookies to send; ``anonymous``: only the load balancer's, none of an authenticated session."""
        cookies = {
            name: value
            for name, value in self.cookies.items()
            if not (anonymous and SESSION_COOKIE_MARK in name.upper())
        }
        if not cookies:
            return {}
        return {"Cookie": "; ".join(f"{name}={value}" for name, value in cookies.items())}

    def update(self, response: aiohttp.ClientResponse) -> None:
        for name, morsel in response.cookies.items():
            if morsel.value and morsel["max-age"] not in ("0", "-1"):
                self.cookies[name] = morsel.value
            else:
                self.cookies.pop(name, None)  # expired: the balancer forgot it


@dataclass
class TrafficStats:
    """Requests and response bytes per host, for the exporter's self-metrics and the benchmarks."""

    requests: dict[str, int] = field(default_factory=dict)
    response_bytes: dict[str, int] = field(default_factory=dict)

    def add(self, host: str, size: int, requests: int = 1) -> None:
        self.requests[host] = self.requests.get(host, 0) + requests
        self.response_bytes[host] = self.response_bytes.get(host, 0) + size

    def merge(self, other: TrafficStats) -> None:
        for host, count in other.requests.items():
            self.add(host, other.response_bytes.get(host, 0), count)


@dataclass(frozen=True)
class HttpSetup:
    """What an HTTP session towards Bitbucket is built from, so a worker process builds the one the event loop's
    client has (exporter/rest/listing_work.py walks listings there)."""

    poll: PollConfig
    tls: TlsConfig
    user_agent: str = f"bitbucket-mirror-exporter/{__version__}"


def http_session(setup: HttpSetup, resolver: aiohttp.abc.AbstractResolver | None = None) -> aiohttp.ClientSession:
    """The session every request to Bitbucket goes through (in a running event loop). No shared cookie jar: each
    mirror keeps its load balancer's affinity cookie itself (``Affinity``)."""
    connector = aiohttp.TCPConnector(
        ssl=setup.tls.context(), limit=0, resolver=resolver, use_dns_cache=resolver is None
    )
    return aiohttp.ClientSession(
        connector=connector, headers={"User-Agent": setup.user_agent}, cookie_jar=aiohttp.DummyCookieJar()
    )


class BitbucketClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        poll: PollConfig,
        rng: random.Random | None = None,
    ) -> None:
        self._session = session
        self._poll = poll
        self._rng = rng or random.Random()
        self._host_limits: dict[str, asyncio.Semaphore] = {}
        # One for every request: built once (a request on the hot path of a listing walk builds nothing it can share).
        self._timeout = aiohttp.ClientTimeout(
            total=poll.timeout_seconds, sock_connect=min(poll.connect_timeout_seconds, poll.timeout_seconds)
        )
        self.stats = TrafficStats()
        # Origin -> its clock, narrowed by every answer (no extra requests: answers carry a Date header anyway).
        self._clocks: dict[str, ClockReading] = {}
        # Rows one listing walk may bring (poll.max_rows, or what the exporter derives from the primary's count).
        self.max_rows: Callable[[], int] = lambda: poll.max_rows or DEFAULT_MAX_ROWS
        # How a worker process builds a session of its own to walk the mirrors' listings; None: they are walked here
        # (a resolver given in this process, as tests give, cannot cross into a worker).
        self.worker_http: HttpSetup | None = None

    def absorb(self, traffic: TrafficStats, base_url: str, clock: ClockReading | None) -> None:
        """What a worker's walk of a listing at ``base_url`` saw: its requests and bytes, the host's clock."""
        self.stats.merge(traffic)
        if clock is not None:
            self._read_clock(origin(base_url), clock)

    def clock(self, base_url: str) -> ClockReading | None:
        """``base_url``'s host's clock, as every answer so far narrowed it, if any."""
        return self._clocks.get(origin(base_url))

    def _read_clock(self, host: str, reading: ClockReading) -> None:
        kept = self._clocks.get(host)
        self._clocks[host] = reading if kept is None else kept.narrowed(reading)

    def _limit_for(self, host: str) -> asyncio.Semaphore:
        if host not in self._host_limits:
            self._host_limits[host] = asyncio.Semaphore(self._poll.concurrency_per_host)
        return self._host_limits[host]

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self._poll.max_backoff_seconds, self._poll.backoff_seconds * 2.0**attempt)
        # "Equal jitter": at least half the exponential step, so retries spread out but still back off.
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    async def _attempt(
        self, url: URL, headers: Mapping[str, str], affinity: Affinity | None
    ) -> tuple[int, str, bytes, str | None]:
        host = origin(url)
        async with self._limit_for(host):
            await starts().turn()  # requests begun together: a few a pass (steps.starts)
            sent = time.time()
            if affinity is not None:
                headers = {**headers, **affinity.header(anonymous="Authorization" not in headers)}
            async with self._session.get(url, headers=headers, timeout=self._timeout, allow_redirects=False) as resp:
                received = time.time()
                if affinity is not None:
                    affinity.update(resp)
                reading = clock_reading(resp.headers.get("Date"), sent, received)
                if reading is not None:
                    self._read_clock(host, reading)
                if 300 <= resp.status < 400:
                    # Never followed (allow_redirects=False): a redirect's target is not the configured host.
                    self.stats.add(f"{url.host}:{url.port}", 0)
                    raise _redirect_error(resp)
                body = await self._read_capped(resp)
                self.stats.add(f"{url.host}:{url.port}", len(body))
                if resp.status == 401 and DENIED_REASON_HEADER in resp.headers:
                    raise _denied_error(resp.headers[DENIED_REASON_HEADER])
                return resp.status, resp.headers.get("Content-Type", ""), body, resp.headers.get("Retry-After")

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        cap = self._poll.max_response_bytes

        def too_large() -> FetchError:
            return FetchError(TOO_LARGE, f"response body larger than poll.max_response_bytes={cap}")

        if resp.content_length is not None and resp.content_length > cap:
            raise too_large()
        if resp.content_length is not None and resp.headers.get("Content-Encoding", "identity") == "identity":
            # Known, allowed and not compressed (a compressed body may inflate past the cap): read in one call.
            return await resp.read()
        body = bytearray()
        async for chunk in resp.content.iter_chunked(1 << 16):
            body += chunk
            if len(body) > cap:
                # Leaving the response unread closes the connection: the rest is never downloaded.
                raise too_large()
        return bytes(body)

    async def get_json(
        self,
        url: URL,
        credentials: Credentials,
        params: Mapping[str, str | int] | None = None,
        affinity: Affinity | None = None,
    ) -> Any:
        """GET a JSON document, retrying timeouts, connection errors, 429 and 5xx with backoff."""
        return await self.get(url, credentials, parse_json, params, affinity)

    async def get(
        self,
        url: URL,
        credentials: Credentials,
        decode: Callable[[bytes], T],
        params: Mapping[str, str | int] | None = None,
        affinity: Affinity | None = None,
    ) -> T:
        """GET and decode a 2xx body with ``decode``, retrying timeouts, connection errors, 429 and 5xx; with an
        ``affinity``, its cookies go along and the answer's replace them."""
        return await self._get(url, await self._headers(credentials), decode, params, affinity)

    @staticmethod
    async def _headers(credentials: Credentials) -> dict[str, str]:
        await prepare(credentials.password_file, credentials.token_file)  # file reads off the event loop
        return {"Accept": "application/json", **auth_headers(credentials)}

    async def _get(
        self,
        url: URL,
        headers: Mapping[str, str],
        decode: Callable[[bytes], T],
        params: Mapping[str, str | int] | None,
        affinity: Affinity | None,
    ) -> T:
        if params:
            url = url.update_query({k: str(v) for k, v in params.items()})
        attempts = self._poll.retries + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            retry_after: float | None = None
            try:
                status, content_type, body, retry_after_header = await self._attempt(url, headers, affinity)
            except aiohttp.ConnectionTimeoutError:
                connect = min(self._poll.connect_timeout_seconds, self._poll.timeout_seconds)
                error = FetchError(CONNECT_TIMEOUT, f"no connection to {url.host}:{url.port} within {connect:g}s")
            except TimeoutError:
                error = FetchError(TIMEOUT, f"no answer within {self._poll.timeout_seconds:g}s")
            except (aiohttp.ClientSSLError, aiohttp.ServerFingerprintMismatch) as exc:
                raise FetchError(TLS, f"TLS failure talking to {url.host}:{url.port}: {_tls_problem(exc)}") from None
            except aiohttp.ClientConnectorDNSError:
                error = FetchError(DNS, f"cannot resolve {url.host}")
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
                error = FetchError(CONNECTION, f"{type(exc).__name__} talking to {url.host}:{url.port}")
            else:
                if 200 <= status < 300:
                    # Answers that arrived together (while the loop ran a long step) are read a few a pass too: the
                    # decoding, and what the caller does with the value in the same step.
                    await starts().turn()
                    return decode_body(content_type, body, decode)
                error = self._status_error(status, content_type, body)
                if status != 429 and status < 500:
                    raise error
                retry_after = _retry_after_seconds(retry_after_header)
            if last:
                raise error
            delay = self._backoff(attempt)
            if retry_after is not None:
                if retry_after > self._poll.max_backoff_seconds:
                    # Honour the server: do not come back sooner than it asked; try again next poll instead.
                    raise error
                delay = max(delay, retry_after)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def send_json(self, method: str, url: URL, credentials: Credentials, document: Any) -> Any:
        """POST or PUT a JSON document once (no retries: a write is not repeated blindly) and return the JSON answer;
        a non-2xx answer is a FetchError carrying the status and the parsed error body."""
        await prepare(credentials.password_file, credentials.token_file)
        headers = {"Accept": "application/json", "Content-Type": "application/json", **auth_headers(credentials)}
        timeout = aiohttp.ClientTimeout(total=self._poll.timeout_seconds)
        try:
            async with self._session.request(
                method, url, data=json.dumps(document), headers=headers, timeout=timeout, allow_redirects=False
            ) as resp:
                body = await self._read_capped(resp)
                if not 200 <= resp.status < 300:
                    raise self._status_error(resp.status, resp.headers.get("Content-Type", ""), body)
                return parse_json(body) if body.strip() else None
        except TimeoutError:
            raise FetchError(TIMEOUT, f"no answer within {self._poll.timeout_seconds:g}s") from None
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise FetchError(CONNECTION, f"{type(exc).__name__} talking to {url.host}:{url.port}") from None

    @staticmethod
    def _status_error(status: int, content_type: str, body: bytes) -> FetchError:
        parsed: Any = None
        message = ""
        if "json" in content_type:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and isinstance(parsed.get("errors"), list) and parsed["errors"]:
                first = parsed["errors"][0]
                if isinstance(first, dict) and isinstance(first.get("message"), str):
                    message = f": {first['message'][:200]}"
        return FetchError(http_reason(status), f"HTTP {status}{message}", status=status, body=parsed)

    async def pages(
        self,
        url: URL,
        credentials: Credentials,
        decode: Callable[[bytes], Page[T]],
        params: Mapping[str, str | int] | None = None,
        affinity: Affinity | None = None,
    ) -> AsyncIterator[list[T]]:
        """Yield the values of each page of a Bitbucket paged resource, decoded by ``decode`` (``parse_page`` for
        plain JSON values)."""
        async for page in self.walk(url, credentials, decode, params, affinity):
            yield page.values

    def raw_pages(
        self, url: URL, credentials: Credentials, affinity: Affinity | None = None
    ) -> AsyncIterator[Page[bytes]]:
        """Each page of a paged resource as its bytes (``Page.body``), for a worker process to decode: only the
        paging fields are read here (``decode_envelope``)."""
        return self.walk(url, credentials, decode_envelope, None, affinity)

    async def walk(
        self,
        url: URL,
        credentials: Credentials,
        decode: Callable[[bytes], Page[T]],
        params: Mapping[str, str | int] | None = None,
        affinity: Affinity | None = None,
    ) -> AsyncIterator[Page[T]]:
        """Yield each page of a Bitbucket paged resource, decoded by ``decode``.

        Asks for ``poll.page_limit`` items, then for whatever ``limit`` the server says it applied; follows
        ``nextPageStart`` (never computes it) and stops with an error on a page loop or past ``poll.max_pages``.
        """
        start = 0
        limit = self._poll.page_limit
        rows, max_rows = 0, self.max_rows()
        # The credentials as one walk's pages all send them (a changed secret file is read for the next walk).
        headers = await self._headers(credentials)
        for _ in range(self._poll.max_pages):
            page = await self._get(
                url, headers, _bounded(decode, limit), {**(params or {}), "start": start, "limit": limit}, affinity
            )
            rows += page.rows
            if rows > max_rows:
                raise FetchError(TOO_MANY_ROWS, f"the listing has more than poll.max_rows={max_rows} rows")
            yield page
            if page.is_last_page is True:  # also when absent: Page's default
                return
            next_start = as_int(page.next_page_start)
            if next_start is None:
                raise FetchError(INVALID_RESPONSE, "isLastPage is false but nextPageStart is missing")
            if next_start <= start:
                raise FetchError(PAGE_LOOP, f"nextPageStart {next_start} does not move past start {start}")
            start = next_start
            server_limit = as_int(page.limit)
            if server_limit is not None and 0 < server_limit < limit:
                limit = server_limit
        raise FetchError(PAGE_CAP, f"more than poll.max_pages={self._poll.max_pages} pages")

    async def get_all(
        self,
        url: URL,
        credentials: Credentials,
        params: Mapping[str, str | int] | None = None,
        affinity: Affinity | None = None,
    ) -> list[Any]:
        values: list[Any] = []
        async for page in self.pages(url, credentials, parse_page, params, affinity):
            values.extend(page)
        return values


def _redirect_error(resp: aiohttp.ClientResponse) -> FetchError:
    """A 3xx: reported, never followed. A redirect to a login page means the credentials were refused (or sent where
    Bitbucket takes none); it names the path only, never a query that might echo anything back."""
    location = URL(resp.headers.get("Location", ""))
    path = location.path or ""
    if "login" in path.lower():
        return FetchError(LOGIN_PAGE, f"HTTP {resp.status} to the login page ({path}): credentials refused here",
                          status=resp.status)  # fmt: skip
    where = f" to {location.host}:{location.port}{path}" if location.host else f" to {path}" if path else ""
    return FetchError(http_reason(resp.status), f"HTTP {resp.status} redirect{where}, not followed", status=resp.status)


def _denied_error(reason: str) -> FetchError:
    """A 401 that Bitbucket explains: ``CAPTCHA_CHALLENGE`` means the account is locked until a person logs in."""
    kind = reason.split(";", 1)[0].strip()[:60]
    if kind.upper().startswith("CAPTCHA"):
        return FetchError(CAPTCHA, "HTTP 401: the account must solve a CAPTCHA (log in once in a browser)", 401)
    return FetchError(CREDENTIALS, f"HTTP 401: authentication denied ({kind})", status=401)


def _bounded(decode: Callable[[bytes], Page[T]], limit: int) -> Callable[[bytes], Page[T]]:
    """``decode``, after a look at the raw bytes: a page can hold no more rows than were asked for, so one with far
    more objects than ``limit`` rows could have is refused before it is decoded into memory."""

    def bounded(body: bytes) -> Page[T]:
        if len(body) > BYTES_PER_ROW * limit and body.count(b"{") > OBJECTS_PER_ROW * limit + OBJECTS_PER_ROW:
            raise FetchError(TOO_MANY_ROWS, f"a page with far more than the {limit} rows asked for")
        return decode(body)

    return bounded


def _tls_problem(exc: Exception) -> str:
    """What went wrong in the handshake, in OpenSSL's words (no secrets: certificates are public)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert_error = exc.certificate_error
        problem = getattr(cert_error, "verify_message", None) or getattr(cert_error, "reason", None)
        return f"certificate not trusted ({problem or type(cert_error).__name__}); is tls.ca_file set?"
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        os_error = exc.os_error
        return str(getattr(os_error, "reason", None) or type(os_error).__name__)
    return type(exc).__name__


def as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None
