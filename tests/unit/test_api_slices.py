"""A long ref changes queue is split undecoded, then read in slices (scrapes get in between): the same items and
errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from exporter.config import Credentials
from exporter.rest.api import QUEUE_SLICE, MirrorApi
from exporter.rest.models import RefSyncQueue
from exporter.sources import INVALID_JSON, INVALID_RESPONSE, FetchError


class Answer(MirrorApi):
    """The API with its one GET answered from memory."""

    def __init__(self, body: Any) -> None:
        super().__init__(None, "https://mirror.example.com", Credentials())  # type: ignore[arg-type]
        self._body = body

    async def _get(self, *path: str, params: dict[str, str | int] | None = None) -> Any:
        return self._body

    async def _get_body(self, *path: str) -> bytes:
        return json.dumps(self._body).encode()


def queue(count: int) -> dict[str, Any]:
    kinds = ("incremental", "SNAPSHOT", "metadata")
    values = [{"externalRepoId": str(i), "attempt": "2", "type": kinds[i % 3], "extra": True} for i in range(count)]
    return {"values": values, "size": count}


async def test_a_long_queue_reads_as_one_validation_would() -> None:
    body = queue(QUEUE_SLICE * 2 + 7)
    sliced = await Answer(body).ref_changes_queue()
    assert sliced == RefSyncQueue.model_validate(body)
    assert len(sliced.values) == QUEUE_SLICE * 2 + 7 and sliced.values[-1].attempt == 2


async def test_a_bad_item_in_a_later_slice_is_the_same_invalid_response() -> None:
    body = queue(QUEUE_SLICE + 5)
    body["values"][QUEUE_SLICE + 1]["attempt"] = {"not": "a number"}
    with pytest.raises(FetchError) as caught:
        await Answer(body).ref_changes_queue()
    assert caught.value.reason == INVALID_RESPONSE
    assert f"refChangesQueue: values.{QUEUE_SLICE + 1}.attempt" in caught.value.detail


class RawAnswer(Answer):
    """The API answering these bytes as sent."""

    def __init__(self, body: bytes) -> None:
        super().__init__(None)
        self._bytes = body

    async def _get_body(self, *path: str) -> bytes:
        return self._bytes


async def test_a_queue_that_is_not_json_is_invalid_json() -> None:
    with pytest.raises(FetchError) as caught:
        await RawAnswer(b'{"values": [{"externalRepoId": "1", ').ref_changes_queue()
    assert caught.value.reason == INVALID_JSON


async def test_a_long_queue_the_fast_split_refuses_is_read_whole_as_before() -> None:
    # NaN is no JSON, but Python's json module reads it: the split (msgspec) refuses the body, the whole read takes it.
    items = ",".join(f'{{"externalRepoId": "{i}", "attempt": 1, "type": "incremental", "x": NaN}}' for i in range(500))
    sliced = await RawAnswer(f'{{"values": [{items}]}}'.encode()).ref_changes_queue()
    assert [item.external_repo_id for item in sliced.values] == [str(i) for i in range(500)]


async def test_a_queue_without_a_values_list_is_an_invalid_response() -> None:
    with pytest.raises(FetchError) as caught:
        await RawAnswer(b'{"values": {"0": {}}}').ref_changes_queue()
    assert caught.value.reason == INVALID_RESPONSE
