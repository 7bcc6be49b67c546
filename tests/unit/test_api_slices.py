"""A long ref changes queue is validated in slices (scrapes get in between): the same items, the same errors."""

from __future__ import annotations

from typing import Any

import pytest

from exporter.config import Credentials
from exporter.rest.api import QUEUE_SLICE, MirrorApi
from exporter.rest.models import RefSyncQueue
from exporter.sources import INVALID_RESPONSE, FetchError


class Answer(MirrorApi):
    """The API with its one GET answered from memory."""

    def __init__(self, body: Any) -> None:
        super().__init__(None, "https://mirror.example.com", Credentials())  # type: ignore[arg-type]
        self._body = body

    async def _get(self, *path: str, params: dict[str, str | int] | None = None) -> Any:
        return self._body


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
