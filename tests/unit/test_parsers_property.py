"""Property tests: whatever bytes or JSON Bitbucket sends, every response parser either returns its result or raises
the project's own FetchError (which the pollers count by reason), never anything else.

hypothesis is used as a library (its pytest plugin is disabled in pyproject.toml). Documents are drawn from JSON
built over the field names the parsers look for, so that most examples get past the first type check and reach the
field conversions (dates, counts, ids) where the surprises are.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.config import Credentials
from exporter.jmx.config import JmxMatch, TimerAttributes
from exporter.jmx.query import classify_failure, parse_rows
from exporter.jmx.reading import read_node
from exporter.rest.api import MirrorApi, PrimaryApi
from exporter.rest.client import BitbucketClient, Page, _retry_after_seconds, decode_body, parse_json, parse_page
from exporter.rest.listings import decode_repository_page, decode_sync_status_page, sync_seconds
from exporter.sources import FetchError

# Every field name the models, listings and JMX reader look at, so generated objects hit real fields.
KEYS = [
    "values", "isLastPage", "nextPageStart", "limit", "size", "start", "count", "value", "state", "memberCount",
    "discovering", "syncedRepos", "totalRepos", "id", "baseUrl", "type", "apiBaseUrl", "name", "address", "port",
    "buildVersion", "local", "content", "metadata", "externalRepoId", "localRepoId", "localProjectId", "upstreamId",
    "failedSyncCount", "initialSyncDate", "lastSyncDate", "hashes", "repoSlug", "attempt", "createdAt", "enabled",
    "lastSeenDate", "mirrorType", "productVersion", "productType", "key", "contentHash", "metadataHash", "slug",
    "project", "properties", "mode", "projectIds", "projectKey", "repositoryId", "repositorySlug", "errors",
    "message", "mBeanName", "attribute", "attributeKey",
]  # fmt: skip
TRICKY_STRINGS = [
    "", " ", "0", "-1", "3", "1e400", "-1e400", "NaN", "inf", "9" * 40, "2024-05-01T10:00:00Z",
    "2024-05-01T10:00:00", "2024-05-01T10:00:00+14:00", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
    "99999-01-01", "SYNCHRONIZED", "com.atlassian:type=Timer,name=x", "\x00", "\ud7ff", "é",
]  # fmt: skip
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.sampled_from([2**63, -(2**63) - 1, 10**400, 0, 1, -1])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(TRICKY_STRINGS)
    | st.text(max_size=12)
)
documents = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=6)
    ),
    max_leaves=24,
)
# Flat objects over the known field names with awkward values: where the field conversions are exercised.
records = st.dictionaries(st.sampled_from(KEYS), scalars, max_size=10)
documents = records | documents
# A page of values: the usual shape, so the value-level conversions are reached often.
paged_documents = st.fixed_dictionaries(
    {"values": st.lists(documents, max_size=4)},
    optional={"isLastPage": scalars, "nextPageStart": scalars, "limit": scalars},
)


def _encode(document: Any) -> bytes:
    return json.dumps(document).encode()


bodies = (
    st.binary(max_size=200)
    | documents.map(_encode)
    | paged_documents.map(_encode)
    | paged_documents.map(_encode).map(lambda b: b[: len(b) // 2])
)

# Two profiles: "unit" keeps the unit tier at seconds on two cores; "long" hunts (scripts/test bench runs it once, as
# tests/system/test_bench.py's test_the_parser_properties_hold_over_a_long_hunt).
settings.register_profile("unit", max_examples=25, deadline=None, database=None)
settings.register_profile("long", max_examples=1000, deadline=None, database=None)
EXAMPLES = settings(settings.get_profile(os.environ.get("PROPERTY_PROFILE", "unit")))

BYTE_PARSERS: dict[str, Callable[[bytes], object]] = {
    "parse_json": parse_json,
    "parse_page": parse_page,
    "decode_body": lambda body: decode_body("application/json", body, parse_json),
    "repoSyncStatus page": decode_sync_status_page,
    "repos page": decode_repository_page,
}


@pytest.mark.parametrize("parse", BYTE_PARSERS.values(), ids=BYTE_PARSERS.keys())
@EXAMPLES
@given(body=bodies)
def test_byte_parsers_raise_only_fetch_error(parse: Callable[[bytes], object], body: bytes) -> None:
    with contextlib.suppress(FetchError):
        parse(body)


@EXAMPLES
@given(body=bodies)
def test_listing_rows_have_the_types_the_exporter_relies_on(body: bytes) -> None:
    try:
        page = decode_sync_status_page(body)
    except FetchError:
        return
    for row in page.values:
        assert isinstance(row.external_repo_id, str)
        assert isinstance(row.failed_sync_count, int)
        if isinstance(row.last_sync_date, datetime):
            assert row.last_sync_date.tzinfo is not None
        if row.last_sync_date is not None:
            assert math.isfinite(sync_seconds(row.last_sync_date))  # the poller's use: must not raise


def _outcome(decode: Callable[[bytes], Page[Any] | None], body: bytes) -> object:
    """The rows as the exporter reads them (dates as epoch seconds), or the error's reason; None: not decoded."""
    try:
        page = decode(body)
    except FetchError as exc:
        return exc.reason
    if page is None:
        return None
    return [
        (
            r.external_repo_id,
            r.failed_sync_count,
            r.hashes,
            None if r.last_sync_date is None else sync_seconds(r.last_sync_date),
        )
        for r in page.values
    ]


dates = (
    # Not NaN or infinity: JSON has neither (json.dumps would write a token msgspec rightly refuses as invalid_json).
    scalars.filter(lambda d: not (isinstance(d, float) and not math.isfinite(d)))
    | st.integers(min_value=-(10**14), max_value=10**14)
    | st.floats(min_value=-1e14, max_value=1e14)
    | st.integers(min_value=-(10**14), max_value=10**14).map(str)
    | st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat())
)


@EXAMPLES
@given(date=dates, failed=st.integers(min_value=0, max_value=5) | st.sampled_from(["3", None]))
def test_both_decoders_read_every_date_the_same_way(date: object, failed: object) -> None:
    # A page the fast decoder takes must give exactly the tolerant models' rows (or the same error); one it refuses
    # goes the tolerant way anyway. Numbers: epoch milliseconds above 1e11, epoch seconds otherwise, both ways.
    row = {"externalRepoId": "1", "failedSyncCount": failed, "lastSyncDate": date, "hashes": {"content": "a"}}
    body = json.dumps({"isLastPage": True, "values": [row]}, allow_nan=True).encode()
    fast = _outcome(decode_sync_status_page.typed, body)
    if fast is not None:
        assert fast == _outcome(decode_sync_status_page.tolerant, body)
    numeric = isinstance(date, int | float) and not isinstance(date, bool)
    if numeric and abs(date) < 1e14 and isinstance(failed, int):  # type: ignore[arg-type]
        assert fast is not None, "a numeric date must stay on the fast path"


class CannedClient(BitbucketClient):
    """Answers every GET with one fixed document, through the same decoding as the real client."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    async def get(
        self, url: Any, credentials: Any, decode: Callable[[bytes], Any], params: Any = None, affinity: Any = None
    ) -> Any:
        return decode_body("application/json", self._body, decode)

    async def pages(self, url: Any, credentials: Any, decode: Any, params: Any = None, affinity: Any = None) -> Any:
        yield (await self.get(url, credentials, decode)).values


def _endpoints(body: bytes) -> dict[str, Callable[[], Awaitable[object]]]:
    client = CannedClient(body)
    mirror = MirrorApi(client, "http://mirror.invalid", Credentials())
    primary = PrimaryApi(client, "http://primary.invalid", Credentials())

    async def first_page(pages: Any) -> object:
        return [row async for row in pages]

    return {
        "status": mirror.status,
        "upstream": mirror.upstream,
        "progress": mirror.progress,
        "farm_nodes": mirror.farm_nodes,
        "sync_settings": mirror.sync_settings,
        "delayed_sync": mirror.delayed_sync,
        "out_of_sync_repos": mirror.out_of_sync_repositories,
        "ref_changes_queue_count": mirror.ref_changes_queue_count,
        "ref_changes_queue": mirror.ref_changes_queue,
        "repo_sync_status": lambda: first_page(mirror.repo_sync_status_pages()),
        "repos": lambda: first_page(primary.repository_pages()),
        "mirror_servers": primary.mirror_servers,
    }


ENDPOINTS = list(_endpoints(b""))


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@EXAMPLES
@given(body=bodies)
def test_every_endpoint_raises_only_fetch_error(endpoint: str, body: bytes) -> None:
    fetch = _endpoints(body)[endpoint]
    with contextlib.suppress(FetchError):
        asyncio.run(fetch())  # type: ignore[arg-type]


@EXAMPLES
@given(
    status=st.integers(min_value=100, max_value=599),
    content_type=st.sampled_from(["application/json", "text/html", ""]),
    body=bodies,
)
def test_error_responses_always_become_a_fetch_error(status: int, content_type: str, body: bytes) -> None:
    error = BitbucketClient._status_error(status, content_type, body)
    assert error.reason == f"http_{status}"


@EXAMPLES
@given(
    value=st.none()
    | st.text(max_size=40)
    | st.sampled_from(["120", "-5", "1e400", "nan", "Wed, 21 Oct 2015 07:28:00 GMT", "Mon, 99 Foo"])
)
def test_retry_after_never_raises(value: str | None) -> None:
    seconds = _retry_after_seconds(value)
    assert seconds is None or seconds >= 0


jmx_rows = st.lists(
    st.dictionaries(st.sampled_from(["mBeanName", "attribute", "attributeKey", "value", "x"]), documents, max_size=4),
    max_size=6,
)


@EXAMPLES
@given(stdout=st.text(max_size=200) | jmx_rows.map(json.dumps) | documents.map(json.dumps))
def test_jmx_output_raises_only_fetch_error(stdout: str) -> None:
    try:
        rows = parse_rows(stdout)
    except FetchError:
        return
    read_node(rows, JmxMatch(), TimerAttributes())


@EXAMPLES
@given(returncode=st.integers(-64, 255), stdout=st.text(max_size=80), stderr=st.text(max_size=80))
def test_jmx_failures_are_always_classified(returncode: int, stdout: str, stderr: str) -> None:
    reason, _ = classify_failure(returncode, stdout, stderr)
    assert reason


def test_the_canned_client_decodes_like_the_real_one() -> None:
    """The endpoint property above is only as good as its stand-in client: a valid page goes through."""
    body = _encode({"values": [{"externalRepoId": "7", "failedSyncCount": "2"}], "isLastPage": True})
    rows: object = asyncio.run(_endpoints(body)["repo_sync_status"]())  # type: ignore[arg-type]
    assert rows == [decode_sync_status_page(body).values]
    assert isinstance(parse_page(body), Page)
