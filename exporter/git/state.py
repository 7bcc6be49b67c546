"""What the git source last learned: each git reference mirror's comparison with its remote, and each Bitbucket
mirror's verify_refs verdicts."""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.git.refs import Comparison, RefVerdict
from exporter.sources import SourceState


@dataclass(frozen=True)
class GitCheck:
    """One comparison of a git reference mirror with its remote."""

    comparison: Comparison
    last_fetch: float | None  # FETCH_HEAD's mtime: when the syncer last fetched
    objects_bytes: int | None
    remote: str
    # Since when the mirror has differed from its remote, as first seen; None while in step.
    behind_since: float | None = None


@dataclass
class GitMirrorState:
    name: str
    path: str
    # Created with own_interval = its interval_seconds: served by the one freshness rule (sources.freshness).
    refs: SourceState[GitCheck] = field(default_factory=SourceState)


@dataclass
class GitState:
    """The git reference mirrors (followed by name across reloads) and verify_refs per Bitbucket mirror name."""

    mirrors: list[GitMirrorState] = field(default_factory=list)
    verified: dict[str, SourceState[list[RefVerdict]]] = field(default_factory=dict)
