"""Ref-level verification of a Bitbucket mirror: ``git ls-remote`` of the same repositories on the primary and on the
mirror (Atlassian's own advice for checking a smart mirror), compared ref by ref with the git mirrors' rules: branches
and tags, pull-request refs excluded (mirrors sync them only periodically). Content hashes say *that* a repository
differs; this says which branch and which commits."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from exporter.config import Credentials, MirrorTarget, PrimaryConfig
from exporter.git.command import Git
from exporter.git.config import GitMirrorConfig, RefsVerification
from exporter.git.refs import RefVerdict, compare, parse_refs
from exporter.sources import FetchError, SourceState, run_source

# The git mirrors' defaults: heads and tags, less pull-request refs.
RULES = GitMirrorConfig(name="verify", path=Path("/"))


class RefVerifier:
    """One mirror's verify_refs, every poll interval: each repository's refs on the primary and on the mirror."""

    def __init__(
        self,
        source: SourceState[list[RefVerdict]],
        mirror: MirrorTarget,
        config: RefsVerification,
        primary: PrimaryConfig,
        git: Git,
        timeout: float,
    ) -> None:
        self.source = source
        self._mirror = mirror
        self._config = config
        self._primary = primary
        self._git = git
        self._timeout = timeout

    def _url(self, base: str, project: str, slug: str) -> str:
        return self._config.clone_url_template.format(base=base.rstrip("/"), project=project, slug=slug)

    async def _one(self, repository: str) -> RefVerdict:
        project, _, slug = repository.partition("/")
        primary_url = self._url(self._primary.url, project, slug)
        mirror_url = self._url(self._mirror.url, project, slug)
        on_primary, on_mirror = await asyncio.gather(
            self._git.output(["ls-remote", primary_url], self._timeout, self._primary, primary_url),
            self._git.output(
                ["ls-remote", mirror_url], self._timeout, self._mirror.credentials_or(self._primary), mirror_url
            ),
        )
        return RefVerdict(project, slug, compare(parse_refs(on_mirror), parse_refs(on_primary), RULES.counted))

    async def _verify(self) -> list[RefVerdict]:
        return list(await asyncio.gather(*(self._one(r) for r in self._config.verify_refs)))

    async def poll_once(self) -> None:
        await run_source(self._mirror.name, "verify_refs", self.source, self._verify)


# At most one ls-remote of a repository on a mirror (or node) in this long: the CI gate's refs proof is asked by
# every pipeline waiting, every few seconds.
PROBE_SECONDS = 5.0


class RefsProbe:
    """The CI gate's third proof (``by: "refs"``): ``git ls-remote`` of the repository on the mirror, and on each of
    its nodes where nodes are read, shows a ref at the commit. One ls-remote per (host, repository) in
    ``PROBE_SECONDS`` at most, through the git runner's slots; credentials through askpass, never on argv."""

    def __init__(self, git: Git, mirrors: dict[str, tuple[RefsVerification, Credentials]], timeout: float) -> None:
        self._git = git
        # By mirror name: where its repositories are cloned from, and the credentials it is read with.
        self._mirrors = mirrors
        self._timeout = timeout
        # (base URL, project, slug) -> (when asked, monotonic; the refs, or None when ls-remote failed)
        self._recent: dict[tuple[str, str, str], tuple[float, dict[str, str] | None]] = {}

    async def refs(self, mirror: str, bases: list[str], project: str, slug: str) -> list[dict[str, str] | None]:
        """Each base's refs (ref -> hash), None for one that could not be read now."""
        config = self._mirrors.get(mirror)
        if config is None:
            return [None for _ in bases]
        return list(await asyncio.gather(*(self._one(config, base, project, slug) for base in bases)))

    async def _one(
        self, mirror: tuple[RefsVerification, Credentials], base: str, project: str, slug: str
    ) -> dict[str, str] | None:
        key = (base, project, slug)
        now = time.monotonic()
        recent = self._recent.get(key)
        if recent is not None and now - recent[0] < PROBE_SECONDS:
            return recent[1]
        config, credentials = mirror
        url = config.clone_url_template.format(base=base.rstrip("/"), project=project, slug=slug)
        try:
            text = await self._git.output(["ls-remote", url], self._timeout, credentials, url)
            found: dict[str, str] | None = parse_refs(text)
        except FetchError:
            found = None
        self._recent[key] = (now, found)
        while len(self._recent) > 10_000:
            self._recent.pop(next(iter(self._recent)))
        return found
