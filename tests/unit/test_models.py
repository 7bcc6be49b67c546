"""The tolerant response models: what Bitbucket really sends, beyond what the specs promise."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from exporter.rest.models import (
    ClusterNode,
    FarmSyncRequest,
    MirrorServer,
    MirrorStatus,
    RepoSyncStatus,
    SyncProgress,
    UpstreamServer,
    epoch_number_seconds,
    parse_count,
    parse_list,
    parse_model,
)
from exporter.sources import FetchError

EPOCH_2024 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC).timestamp()


def test_status_member_count_arrives_as_a_string() -> None:
    status = MirrorStatus.model_validate(
        {"state": "SYNCHRONIZED", "memberCount": "3", "discovering": False, "syncedRepos": 0, "totalRepos": 0}
    )
    assert status.member_count == 3
    assert status.state == "SYNCHRONIZED"


@pytest.mark.parametrize("state", ["BOOTSTRAPPED", "METADATA_SYNCHRONIZED", "SOMETHING_FROM_BITBUCKET_11"])
def test_unknown_and_undocumented_states_are_kept(state: str) -> None:
    assert MirrorStatus.model_validate({"state": state}).state == state
    assert UpstreamServer.model_validate({"id": "x", "state": state}).state == state


def test_unknown_fields_are_ignored() -> None:
    progress = SyncProgress.model_validate({"discovering": True, "syncedRepos": "4", "totalRepos": 9, "new": [1]})
    assert progress == SyncProgress(discovering=True, synced_repos=4, total_repos=9)


@pytest.mark.parametrize(
    "raw",
    [
        "2024-03-01T12:00:00Z",
        "2024-03-01T12:00:00.000+00:00",
        "2024-03-01T13:00:00+01:00",
        "2024-03-01T12:00:00",
        int(EPOCH_2024 * 1000),
        str(int(EPOCH_2024 * 1000)),
        EPOCH_2024 * 1000.0,
        # Epoch seconds: a number at or below 1e11 (1e11 ms would be 1973, 1e11 s the year 5138).
        int(EPOCH_2024),
        str(int(EPOCH_2024)),
        EPOCH_2024,
    ],
)
def test_dates_as_iso_8601_or_epoch_numbers(raw: object) -> None:
    repo = RepoSyncStatus.model_validate({"externalRepoId": "1", "lastSyncDate": raw})
    assert repo.last_sync_date == pytest.approx(EPOCH_2024)


def test_repo_sync_status_fields_from_the_spec() -> None:
    repo = RepoSyncStatus.model_validate(
        {
            "externalRepoId": 12,  # sometimes a number
            "localRepoId": 1012,
            "localProjectId": "7",
            "upstreamId": "148728f5",
            "failedSyncCount": "2",
            "initialSyncDate": "2024-03-01T12:00:00Z",
            "lastSyncDate": None,
            "hashes": {"content": "ab" * 32, "metadata": "0" * 40},
            "repoSlug": "repo-12",
        }
    )
    assert repo.external_repo_id == "12"
    assert repo.failed_sync_count == 2
    assert repo.local_project_id == 7
    assert repo.last_sync_date is None
    assert repo.hashes is not None and repo.hashes.metadata == "0" * 40
    assert repo.repo_slug == "repo-12"


def test_queue_item_type_is_kept_as_sent() -> None:
    assert FarmSyncRequest.model_validate({"type": "INCREMENTAL"}).type == "INCREMENTAL"


def test_mirror_server_and_node() -> None:
    server = MirrorServer.model_validate(
        {
            "id": "B0F5",
            "name": "Mirror",
            "baseUrl": "http://m",
            "enabled": "true",
            "lastSeenDate": 1709294400000,
            "mirrorType": "HYBRID",
            "productVersion": "9.6.0",
            "productType": "Bitbucket",
        }
    )
    assert server.enabled is True and server.mirror_type == "HYBRID"
    assert server.last_seen_date == pytest.approx(EPOCH_2024)
    node = ClusterNode.model_validate({"id": "n1", "address": {"address": "10.0.0.5", "port": "7990"}})
    assert node.address is not None and node.address.port == 7990


@pytest.mark.parametrize(("body", "expected"), [(5, 5), ("17", 17), (3.0, 3), ({"count": "4"}, 4), ({"size": 2}, 2)])
def test_ref_changes_queue_count_in_any_reasonable_shape(body: object, expected: int) -> None:
    assert parse_count(body) == expected


@pytest.mark.parametrize("body", [None, True, "many", [1], {"other": 1}, 2.5])
def test_ref_changes_queue_count_rejects_nonsense(body: object) -> None:
    with pytest.raises(ValueError):
        parse_count(body)


@pytest.mark.parametrize(
    "body",
    [
        {"externalRepoId": "1", "failedSyncCount": "lots"},
        {"failedSyncCount": 1},
        {"externalRepoId": "1", "lastSyncDate": "yesterday"},
        "a string",
        None,
    ],
)
def test_a_body_of_the_wrong_shape_is_an_invalid_response(body: object) -> None:
    with pytest.raises(FetchError) as caught:
        parse_model(RepoSyncStatus, body, "repoSyncStatus")
    assert caught.value.reason == "invalid_response"


def test_a_list_endpoint_that_sends_an_object_is_an_invalid_response() -> None:
    with pytest.raises(FetchError) as caught:
        parse_list(ClusterNode, {"values": []}, "farmNodes")
    assert caught.value.reason == "invalid_response"


@pytest.mark.parametrize(
    ("number", "seconds"),
    [(1e11, 1e11), (1e11 + 1, 1e8 + 0.001), (0, 0.0), (-1e12, -1e9), (1_709_294_400, 1_709_294_400)],
)
def test_one_rule_for_numeric_dates(number: float, seconds: float) -> None:
    assert epoch_number_seconds(number) == pytest.approx(seconds)
