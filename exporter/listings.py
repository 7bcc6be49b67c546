"""Decoders for the two listings that grow with the number of repositories: the primary's ``repos`` and a mirror's
``supportInfo/repoSyncStatus``.

At 100,000 repositories and three mirrors, validating these pages with the pydantic models took about 60% of a poll
cycle (bench/README.md has the profile). They are decoded straight from the response bytes into msgspec structs that
hold only the fields the exporter reads. A page the typed decoder refuses (a number sent as a string where a string
is expected, a date without an offset, ...) goes through the tolerant models of models.py instead, so both ways
accept the same documents and yield the same rows.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

import msgspec
from pydantic import BaseModel

from exporter.client import INVALID_JSON, FetchError, Page, parse_page
from exporter.models import EnrichedRepository, RepoSyncStatus
from exporter.parsing import parse_model

R = TypeVar("R")
M = TypeVar("M", bound=BaseModel)

AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]


class Hashes(msgspec.Struct, frozen=True, gc=False):
    content: str | None = None
    metadata: str | None = None


class SyncStatusRow(msgspec.Struct, frozen=True, gc=False, rename="camel"):
    """The fields of RestMirrorRepositorySynchronizationStatus the exporter reads."""

    external_repo_id: str
    failed_sync_count: int = 0
    last_sync_date: AwareDatetime | None = None
    hashes: Hashes | None = None


class ProjectRow(msgspec.Struct, frozen=True, gc=False):
    key: str
    id: int | None = None


class RepositoryHashes(msgspec.Struct, frozen=True, gc=False, rename="camel"):
    content_hash: str | None = None
    metadata_hash: str | None = None


class PrimaryRepositoryRow(msgspec.Struct, frozen=True, gc=False):
    """The fields of one value of the primary's ``repos`` the exporter reads."""

    id: int | str
    slug: str
    project: ProjectRow
    properties: RepositoryHashes | None = None


class _Envelope(msgspec.Struct, Generic[R], rename="camel"):
    values: list[R]
    # Judged by BitbucketClient.pages exactly as sent, like any other listing's.
    is_last_page: Any = True
    next_page_start: Any = None
    limit: Any = None


def _sync_status_row(model: RepoSyncStatus) -> SyncStatusRow:
    when = model.last_sync_date
    return SyncStatusRow(
        model.external_repo_id,
        model.failed_sync_count,
        None if when is None else datetime.fromtimestamp(when, UTC),
        None if model.hashes is None else Hashes(model.hashes.content, model.hashes.metadata),
    )


def _repository_row(model: EnrichedRepository) -> PrimaryRepositoryRow:
    hashes = model.properties
    return PrimaryRepositoryRow(
        model.id,
        model.slug,
        ProjectRow(model.project.key, model.project.id),
        None if hashes is None else RepositoryHashes(hashes.content_hash, hashes.metadata_hash),
    )


def page_decoder(row: type[R], model: type[M], from_model: Callable[[M], R], what: str) -> Callable[[bytes], Page[R]]:
    typed = msgspec.json.Decoder(_Envelope[row], strict=False)  # type: ignore[valid-type]

    def decode(body: bytes) -> Page[R]:
        try:
            envelope = typed.decode(body)
        except msgspec.ValidationError:
            pass  # valid JSON of a shape the typed decoder is stricter about: the tolerant models decide
        except msgspec.DecodeError:
            raise FetchError(INVALID_JSON, "response is not valid JSON") from None
        else:
            return Page(envelope.values, envelope.is_last_page, envelope.next_page_start, envelope.limit)
        page = parse_page(body)
        rows = [from_model(parse_model(model, value, what)) for value in page.values]
        return Page(rows, page.is_last_page, page.next_page_start, page.limit)

    return decode


decode_sync_status_page = page_decoder(SyncStatusRow, RepoSyncStatus, _sync_status_row, "repoSyncStatus")
decode_repository_page = page_decoder(PrimaryRepositoryRow, EnrichedRepository, _repository_row, "repos")
