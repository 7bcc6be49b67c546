"""Decoders for the two listings that grow with the number of repositories: the primary's ``repos`` and a mirror's
``supportInfo/repoSyncStatus``.

At 100,000 repositories and three mirrors, validating these pages with the pydantic models took about 60% of a poll
cycle (bench/README.md has the profile). They are decoded straight from the response bytes into msgspec structs that
hold only the fields the exporter reads. A page the typed decoder refuses (a number sent as a string where a string
is expected, a date without an offset, ...) goes through the tolerant models of models.py instead, so both ways
accept the same documents and yield the same rows. Numeric dates follow models.epoch_number_seconds in both ways
(epoch milliseconds above 1e11, else epoch seconds), so a page of numeric dates stays on the fast path.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

import msgspec
from pydantic import BaseModel

from exporter.rest.client import Page, parse_page
from exporter.rest.models import EnrichedRepository, RepoSyncStatus, epoch_number_seconds, parse_model
from exporter.sources import INVALID_JSON, INVALID_RESPONSE, FetchError

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
    # A datetime, or epoch seconds (a float) where Bitbucket sent a number: numbers (msgspec reads numeric strings as
    # numbers too) are turned into seconds by _numeric_dates_as_seconds, by the tolerant models' rule, before the
    # page leaves the decoder. ISO dates stay datetimes so the common page costs no conversion per row;
    # ``sync_seconds`` reads either.
    last_sync_date: AwareDatetime | float | None = None
    # Read only where the repository never synced since (lag dated from the push, exporter/rest/push_dating.py).
    initial_sync_date: AwareDatetime | float | None = None
    hashes: Hashes | None = None

    def synced_at(self) -> datetime | float | None:
        """When this copy last synced, else when it first did (as decoded): pushes after it are what it lacks."""
        return self.last_sync_date if self.last_sync_date is not None else self.initial_sync_date


def sync_seconds(when: datetime | float) -> float:
    return when if type(when) is float else when.timestamp()  # type: ignore[union-attr]


def _numeric_dates_as_seconds(rows: list[SyncStatusRow]) -> list[SyncStatusRow]:
    for index, row in enumerate(rows):
        for name, field in (("last_sync_date", "lastSyncDate"), ("initial_sync_date", "initialSyncDate")):
            value = getattr(row, name)
            if type(value) is float:
                try:
                    seconds = epoch_number_seconds(value)
                except ValueError:
                    raise FetchError(INVALID_RESPONSE, f"repoSyncStatus: {field}: a date out of range") from None
                row = rows[index] = msgspec.structs.replace(row, **{name: seconds})
    return rows


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
    return SyncStatusRow(
        model.external_repo_id,
        model.failed_sync_count,
        model.last_sync_date,
        model.initial_sync_date,
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


class PageDecoder(Generic[R, M]):
    """Decodes a listing page with msgspec (``typed``), or, when msgspec refuses the page's shape, with the tolerant
    pydantic models (``tolerant``): both accept the same documents and yield the same rows."""

    def __init__(
        self,
        row: type[R],
        model: type[M],
        from_model: Callable[[M], R],
        what: str,
        finish: Callable[[list[R]], list[R]] = lambda rows: rows,
    ) -> None:
        self._decoder = msgspec.json.Decoder(_Envelope[row], strict=False)  # type: ignore[valid-type]
        self._model, self._from_model, self._what, self._finish = model, from_model, what, finish

    def typed(self, body: bytes) -> Page[R] | None:
        """The fast way; None when the page's shape needs the tolerant one."""
        try:
            envelope = self._decoder.decode(body)
        except msgspec.ValidationError:
            return None  # valid JSON of a shape the typed decoder is stricter about: the tolerant models decide
        except msgspec.DecodeError:
            raise FetchError(INVALID_JSON, "response is not valid JSON") from None
        return Page(self._finish(envelope.values), envelope.is_last_page, envelope.next_page_start, envelope.limit)

    def tolerant(self, body: bytes) -> Page[R]:
        page = parse_page(body)
        rows = [self._from_model(parse_model(self._model, value, self._what)) for value in page.values]
        return Page(rows, page.is_last_page, page.next_page_start, page.limit)

    def __call__(self, body: bytes) -> Page[R]:
        page = self.typed(body)
        return page if page is not None else self.tolerant(body)


decode_sync_status_page = PageDecoder(
    SyncStatusRow, RepoSyncStatus, _sync_status_row, "repoSyncStatus", _numeric_dates_as_seconds
)
decode_repository_page = PageDecoder(PrimaryRepositoryRow, EnrichedRepository, _repository_row, "repos")
