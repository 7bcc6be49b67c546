"""Refs as git prints them, and how a mirror's compare with its remote's: pure, no processes."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_LINE = re.compile(r"^([0-9a-f]{40}|[0-9a-f]{64})\s+(\S+)$")


def parse_refs(text: str) -> dict[str, str]:
    """``<hash> <ref>`` lines (``git ls-remote``, ``git for-each-ref --format='%(objectname) %(refname)'``) as
    ref -> hash; HEAD and peeled tags (``^{}``) left out, so an annotated tag compares by its tag object on both
    sides; lines that are not refs (warnings) are skipped."""
    refs = {}
    for line in text.splitlines():
        match = _LINE.match(line.strip())
        if match is None:
            continue
        value, ref = match.groups()
        if ref.startswith("refs/") and not ref.endswith("^{}"):
            refs[ref] = value
    return refs


@dataclass(frozen=True)
class Difference:
    ref: str
    local: str | None  # None: the mirror lacks it
    remote: str | None  # None: the remote no longer has it (extra)


@dataclass(frozen=True)
class Comparison:
    local: int
    remote: int
    behind: tuple[Difference, ...]  # refs whose local value differs from the remote's, or missing locally
    extra: tuple[Difference, ...]  # local refs the remote no longer has

    @property
    def in_step(self) -> bool:
        return not self.behind


def compare(local: dict[str, str], remote: dict[str, str], counted: Callable[[str], bool]) -> Comparison:
    """The refs ``counted`` keeps (the configured globs, less the exclusions), compared by name and hash."""
    mine = {ref: value for ref, value in local.items() if counted(ref)}
    theirs = {ref: value for ref, value in remote.items() if counted(ref)}
    behind = tuple(
        Difference(ref, mine.get(ref), value) for ref, value in sorted(theirs.items()) if mine.get(ref) != value
    )
    extra = tuple(Difference(ref, value, None) for ref, value in sorted(mine.items()) if ref not in theirs)
    return Comparison(len(mine), len(theirs), behind, extra)


def objects_bytes(count_objects: str) -> int | None:
    """The repository's size on disk from ``git count-objects -v`` (size, size-pack and size-garbage are KiB)."""
    sizes = {}
    for line in count_objects.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("size", "size-pack", "size-garbage") and value.strip().isdigit():
            sizes[key.strip()] = int(value.strip())
    return sum(sizes.values()) * 1024 if sizes else None


@dataclass(frozen=True)
class RefVerdict:
    """One repository's refs on a Bitbucket mirror (local) against the primary's (remote)."""

    project: str
    slug: str
    comparison: Comparison
