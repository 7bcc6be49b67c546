"""Tolerant models of the Bitbucket mirroring API responses.

Field names follow the Bitbucket DC 9.2 and 9.6 OpenAPI specs. Where the specs are silent or Bitbucket is known to
differ from them, the models accept more than the specs promise (see docs/assumptions.md):

* unknown fields are ignored;
* enum-like fields (``state``, ``mirrorType``, ``type``) are plain strings, so a value no spec lists is kept as sent;
* numbers sent as strings are accepted (``/status`` sends ``memberCount`` as ``"3"``);
* dates are accepted as ISO 8601 strings or as epoch numbers (number or string), and held as epoch seconds. A
  number above 1e11 is epoch milliseconds, any other epoch seconds (``epoch_number_seconds``): the 9.x specs type
  dates as date-time strings, other Bitbucket resources send milliseconds, and what a given version sends for
  ``lastSyncDate`` is not published. exporter/rest/listings.py applies the same rule.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from exporter.sources import INVALID_RESPONSE, FetchError

# Dates Python can hold (years 1 to 9999): anything outside is a broken answer, not a date to compare.
_EARLIEST, _LATEST = datetime.min.replace(tzinfo=UTC).timestamp(), datetime.max.replace(tzinfo=UTC).timestamp()


# 1e11 seconds is the year 5138; 1e11 milliseconds is March 1973, before any Bitbucket: no date is ambiguous.
MILLISECONDS_ABOVE = 1e11


def epoch_number_seconds(number: float) -> float:
    """A numeric date as epoch seconds: epoch milliseconds when its magnitude is above 1e11, else epoch seconds.
    Raises ValueError for a date Python cannot hold (NaN included)."""
    return _in_range(number, 1000.0 if abs(number) > MILLISECONDS_ABOVE else 1.0)


def _epoch_seconds(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("a date, not a boolean")
    if isinstance(value, int | float):
        return epoch_number_seconds(value)
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == "null":
            return None  # as msgspec's lax mode reads it on the fast path: a date that is not there
        try:
            number = float(text)
        except ValueError:
            pass
        else:
            return epoch_number_seconds(number)
        # fromisoformat in 3.11 accepts "Z" and offsets; a date-time without an offset is taken as UTC.
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return _in_range(parsed.timestamp(), 1.0)
    raise ValueError("a date must be an ISO 8601 string or an epoch number")


def _in_range(number: float, per_second: float) -> float:
    try:
        seconds = float(number) / per_second
    except OverflowError:  # an int beyond float range
        raise ValueError("a date out of range") from None
    if not _EARLIEST <= seconds <= _LATEST:  # also NaN
        raise ValueError("a date out of range")
    return seconds


Timestamp = Annotated[float | None, BeforeValidator(_epoch_seconds)]


def created_seconds(activity: Any) -> float:
    """A ref change activity's ``createdDate`` (epoch milliseconds in the spec; a numeric string or an ISO date
    accepted too), in seconds; ValueError when it has none."""
    if not isinstance(activity, dict) or "createdDate" not in activity:
        raise ValueError("an activity without createdDate")
    seconds = _epoch_seconds(activity["createdDate"])
    if not isinstance(seconds, float):
        raise ValueError("createdDate is not a date")
    return seconds


def _as_str(value: Any) -> Any:
    # Ids are strings in the specs but some versions send them as numbers.
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


IdStr = Annotated[str, BeforeValidator(_as_str)]


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class MirrorStatus(ApiModel):
    """``GET /status`` on a mirror (outside /rest)."""

    state: str = "UNKNOWN"
    member_count: int | None = Field(default=None, alias="memberCount")
    discovering: bool | None = None
    synced_repos: int | None = Field(default=None, alias="syncedRepos")
    total_repos: int | None = Field(default=None, alias="totalRepos")


class UpstreamServer(ApiModel):
    """RestUpstreamServer: 9.x ``upstreamServer``, 8.x ``upstreamServers/{id}``."""

    id: IdStr
    state: str = "UNKNOWN"
    base_url: str | None = Field(default=None, alias="baseUrl")
    type: str | None = None
    api_base_url: str | None = Field(default=None, alias="apiBaseUrl")


class SyncProgress(ApiModel):
    """RestSyncProgress."""

    discovering: bool = False
    synced_repos: int = Field(default=0, alias="syncedRepos")
    total_repos: int = Field(default=0, alias="totalRepos")


class NodeAddress(ApiModel):
    address: str | None = None
    port: int | None = None


class ClusterNode(ApiModel):
    """RestClusterNode, one entry of ``farmNodes``."""

    id: IdStr
    name: str | None = None
    address: NodeAddress | None = None
    build_version: str | None = Field(default=None, alias="buildVersion")
    local: bool | None = None


class RepoHashes(ApiModel):
    content: str | None = None
    metadata: str | None = None


class RepoSyncStatus(ApiModel):
    """RestMirrorRepositorySynchronizationStatus, one value of ``supportInfo/repoSyncStatus``."""

    external_repo_id: IdStr = Field(alias="externalRepoId")
    local_repo_id: int | None = Field(default=None, alias="localRepoId")
    local_project_id: int | None = Field(default=None, alias="localProjectId")
    upstream_id: IdStr | None = Field(default=None, alias="upstreamId")
    failed_sync_count: int = Field(default=0, alias="failedSyncCount")
    initial_sync_date: Timestamp = Field(default=None, alias="initialSyncDate")
    last_sync_date: Timestamp = Field(default=None, alias="lastSyncDate")
    hashes: RepoHashes | None = None
    # 8.x examples carry the slug; the 9.x schemas do not.
    repo_slug: str | None = Field(default=None, alias="repoSlug")


class FarmSyncRequest(ApiModel):
    """RestFarmSynchronizationRequest, one item of the ref-changes queue."""

    external_repo_id: IdStr | None = Field(default=None, alias="externalRepoId")
    attempt: int | None = None
    created_at: Timestamp = Field(default=None, alias="createdAt")
    # The spec's enum is lower case, its example upper case: callers compare case-insensitively.
    type: str | None = None


class RefSyncQueue(ApiModel):
    """RestRefSyncQueue."""

    values: list[FarmSyncRequest] = Field(default_factory=list)


class MirrorServer(ApiModel):
    """RestMirrorServer, one value of the primary's ``mirrorServers``."""

    id: IdStr
    name: str | None = None
    base_url: str | None = Field(default=None, alias="baseUrl")
    enabled: bool | None = None
    last_seen_date: Timestamp = Field(default=None, alias="lastSeenDate")
    mirror_type: str | None = Field(default=None, alias="mirrorType")
    product_version: str | None = Field(default=None, alias="productVersion")
    product_type: str | None = Field(default=None, alias="productType")


def parse_count(body: Any) -> int:
    """``refChangesQueue/count`` is untyped in the specs: accept a bare number, a numeric string, or an object
    holding ``count`` (or ``size``)."""
    if isinstance(body, dict):
        for key in ("count", "size", "value"):
            if key in body:
                return parse_count(body[key])
        raise ValueError("no count in object")
    if isinstance(body, bool):
        raise ValueError("a count, not a boolean")
    if isinstance(body, int):
        return body
    if isinstance(body, float) and body.is_integer():
        return int(body)
    if isinstance(body, str):
        return int(body.strip())
    raise ValueError("not a count")


class ProjectRef(ApiModel):
    id: int | None = None
    key: str


class RepositoryHashes(ApiModel):
    content_hash: str | None = Field(default=None, alias="contentHash")
    metadata_hash: str | None = Field(default=None, alias="metadataHash")


class EnrichedRepository(ApiModel):
    """One value of the primary's ``mirroring/latest/repos``: a repository with its content and metadata hashes."""

    id: IdStr
    slug: str
    project: ProjectRef
    properties: RepositoryHashes | None = None


class SyncSettings(ApiModel):
    """RestUpstreamSettings: which projects the mirror is meant to carry."""

    mode: str = "ALL_PROJECTS"
    project_ids: list[IdStr] = Field(default_factory=list, alias="projectIds")


class DelayedSyncRepository(ApiModel):
    """RestDelayedSyncRepository (9.5+ ``mirrorRepos/delayed-sync``)."""

    project_key: str | None = Field(default=None, alias="projectKey")
    repository_id: IdStr | None = Field(default=None, alias="repositoryId")
    repository_slug: str | None = Field(default=None, alias="repositorySlug")


def parse_repository_ids(body: Any) -> list[str]:
    """``supportInfo/out-of-sync-repos/content`` is typed as a bare string holding "a list of repository IDs".
    Accept a JSON array of ids or of objects with an id, or a string of ids separated by commas or white space."""
    if isinstance(body, str):
        return [part for part in body.replace(",", " ").split() if part]
    if isinstance(body, dict) and isinstance(body.get("values"), list):
        body = body["values"]
    if not isinstance(body, list):
        raise ValueError("not a list of repository ids")
    ids: list[str] = []
    for item in body:
        if isinstance(item, dict):
            item = item.get("repositoryId", item.get("id"))
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise ValueError("not a repository id")
        ids.append(str(item))
    return ids


# --- Turning decoded JSON into these models, failing with the client's own error ------------------------------------

M = TypeVar("M", bound=BaseModel)


def parse_model(model: type[M], data: Any, what: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise FetchError(INVALID_RESPONSE, f"{what}: {where}: {first['msg']}") from None


def parse_list(model: type[M], data: Any, what: str) -> list[M]:
    if not isinstance(data, list):
        raise FetchError(INVALID_RESPONSE, f"{what}: expected a JSON array")
    return [parse_model(model, item, what) for item in data]
