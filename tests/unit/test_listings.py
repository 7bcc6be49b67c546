"""The fast decoders of the two large listings accept what the tolerant models accept, and yield the same rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from exporter.rest import listings
from exporter.rest.listings import (
    Hashes,
    PrimaryRepositoryRow,
    ProjectRow,
    RepositoryHashes,
    SyncStatusRow,
    decode_repository_page,
    decode_sync_status_page,
    sync_seconds,
)
from exporter.sources import INVALID_JSON, INVALID_RESPONSE, FetchError

EPOCH_2024 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
INITIAL_2024 = datetime(2024, 1, 1, 0, 0, tzinfo=UTC)
CONTENT, METADATA = "a" * 64, "b" * 64


def page(*values: Any, **paging: Any) -> bytes:
    return json.dumps(
        {"size": len(values), "limit": 25, "isLastPage": True, "start": 0, "values": values, **paging}
    ).encode()


def sync_row(**fields: Any) -> dict[str, Any]:
    return {
        "externalRepoId": "7",
        "localRepoId": 1007,
        "localProjectId": 101,
        "upstreamId": "u",
        "failedSyncCount": 2,
        "initialSyncDate": "2024-01-01T00:00:00.000Z",
        "lastSyncDate": "2024-03-01T12:00:00.000Z",
        "hashes": {"content": CONTENT, "metadata": METADATA},
        **fields,
    }


EXPECTED_SYNC_ROW = SyncStatusRow("7", 2, EPOCH_2024, INITIAL_2024, Hashes(CONTENT, METADATA))


def as_read(rows: list[SyncStatusRow]) -> list[SyncStatusRow]:
    """Rows as the exporter reads them: a date as epoch seconds, whether it arrived as a string or a number."""
    return [
        msgspec.structs.replace(
            r,
            last_sync_date=None if r.last_sync_date is None else sync_seconds(r.last_sync_date),
            initial_sync_date=None if r.initial_sync_date is None else sync_seconds(r.initial_sync_date),
        )
        for r in rows
    ]


def test_a_documented_sync_status_page_decodes_to_rows_and_keeps_its_paging_fields(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Without the tolerant way: a documented page must take the fast one.
    monkeypatch.setattr(listings, "parse_page", None)
    decoded = decode_sync_status_page(page(sync_row(), isLastPage=False, nextPageStart=25))
    assert decoded.values == [EXPECTED_SYNC_ROW]  # an ISO date stays a datetime: no conversion per row
    assert (decoded.is_last_page, decoded.next_page_start, decoded.limit) == (False, 25, 25)


@pytest.mark.parametrize(
    "variant",
    [
        {"externalRepoId": 7},  # a number where the spec has a string: the tolerant models take it
        {"failedSyncCount": "2"},
        {"lastSyncDate": "2024-03-01T13:00:00+01:00"},
        {"lastSyncDate": "2024-03-01T12:00:00"},  # no offset: UTC
        {"lastSyncDate": int(EPOCH_2024.timestamp() * 1000)},  # epoch milliseconds
        {"lastSyncDate": str(int(EPOCH_2024.timestamp() * 1000))},
        {"repoSlug": "r", "somethingNew": {"x": [1]}},
    ],
)
def test_tolerated_variants_give_the_same_row(variant: dict[str, Any]) -> None:
    assert as_read(decode_sync_status_page(page(sync_row(**variant))).values) == as_read([EXPECTED_SYNC_ROW])


@pytest.mark.parametrize(
    "date",
    [
        int(EPOCH_2024.timestamp() * 1000),  # epoch milliseconds, as other Bitbucket resources send dates
        EPOCH_2024.timestamp() * 1000.0,
        int(EPOCH_2024.timestamp()),  # epoch seconds
        str(int(EPOCH_2024.timestamp() * 1000)),  # numeric strings are numbers to msgspec too
    ],
)
def test_numeric_dates_stay_on_the_fast_path(monkeypatch: pytest.MonkeyPatch, date: object) -> None:
    # Without the tolerant way: these pages must not fall back to it (at 100,000 repositories that costs seconds).
    monkeypatch.setattr(listings, "parse_page", None)
    assert as_read(decode_sync_status_page(page(sync_row(lastSyncDate=date))).values) == as_read([EXPECTED_SYNC_ROW])


def test_a_numeric_date_out_of_range_is_an_invalid_response_both_ways() -> None:
    body = page(sync_row(lastSyncDate=1e300))
    for decode in (decode_sync_status_page.typed, decode_sync_status_page.tolerant):
        with pytest.raises(FetchError) as caught:
            decode(body)
        assert caught.value.reason == INVALID_RESPONSE


def test_absent_hashes_and_dates_stay_absent() -> None:
    row = {"externalRepoId": "7"}
    assert decode_sync_status_page(page(row)).values == [SyncStatusRow("7")]
    assert decode_sync_status_page(page({**row, "hashes": None, "lastSyncDate": None})).values == [SyncStatusRow("7")]


def test_a_primary_repository_page_decodes_to_rows() -> None:
    repo = {
        "id": 42,
        "slug": "api",
        "name": "API",
        "project": {"id": 3, "key": "PRJ", "name": "P", "type": "NORMAL"},
        "properties": {"contentHash": CONTENT, "metadataHash": METADATA, "defaultBranchId": "refs/heads/main"},
    }
    expected = PrimaryRepositoryRow(42, "api", ProjectRow("PRJ", 3), RepositoryHashes(CONTENT, METADATA))
    assert decode_repository_page(page(repo)).values == [expected]
    # The id as a string and the project id as a string go the tolerant way and mean the same.
    tolerant = decode_repository_page(page({**repo, "id": "42", "project": {"id": "3", "key": "PRJ"}})).values[0]
    assert (str(tolerant.id), tolerant.project, tolerant.properties) == ("42", expected.project, expected.properties)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"values": [{"externalRepoId": "1", ', INVALID_JSON),
        (b"\xff\xfe", INVALID_JSON),
        (b"[]", INVALID_RESPONSE),
        (b'{"isLastPage": true}', INVALID_RESPONSE),
        (page({"failedSyncCount": 1}), INVALID_RESPONSE),  # no externalRepoId
        (page(sync_row(hashes=5)), INVALID_RESPONSE),
        (page(sync_row(failedSyncCount=None)), INVALID_RESPONSE),
    ],
)
def test_bodies_neither_way_can_read_are_the_clients_own_errors(body: bytes, reason: str) -> None:
    with pytest.raises(FetchError) as caught:
        decode_sync_status_page(body)
    assert caught.value.reason == reason


def test_a_copy_that_never_synced_again_is_dated_from_its_initial_sync() -> None:
    both, first_only = sync_row(), sync_row(lastSyncDate=None, initialSyncDate=1_704_067_200_000)
    assert decode_sync_status_page(page(both)).values[0].synced_at() == EPOCH_2024
    assert decode_sync_status_page(page(first_only)).values[0].synced_at() == INITIAL_2024.timestamp()
    assert (
        decode_sync_status_page(page(sync_row(lastSyncDate=None, initialSyncDate=None))).values[0].synced_at() is None
    )
