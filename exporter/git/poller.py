"""Compares each git reference mirror with its remote, on the mirror's own interval.

One check is three read-only git processes: ``for-each-ref`` on the mirror (every local ref at once), ``ls-remote``
on the remote (one network call), ``count-objects -v`` (its size); plus ``config --get remote.origin.url`` when the
remote is not configured. None of them writes to the repository or takes a lock, so the mirror may be mounted
read-only while its syncer updates it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from exporter.git.command import GIT_FAILED, Git
from exporter.git.config import GitMirrorConfig, check_remote
from exporter.git.refs import compare, objects_bytes, parse_refs
from exporter.git.state import GitCheck, GitMirrorState
from exporter.sources import FetchError, SourceState, poll_forever, run_source
from exporter.supervisor import Fleet

log = logging.getLogger("exporter.git")


def last_fetch(path: Path) -> float | None:
    """When the syncer last fetched: FETCH_HEAD's modification time (written by every fetch), else None."""
    with contextlib.suppress(OSError):
        return (path / "FETCH_HEAD").stat().st_mtime
    return None


class GitMirrorPoller:
    def __init__(self, state: GitMirrorState, config: GitMirrorConfig, git: Git) -> None:
        self.state = state
        self._config = config
        self._git = git

    async def _remote(self) -> str:
        if self._config.remote is not None:
            return self._config.remote
        path = str(self._config.path)
        url = await self._git.output(["-C", path, "config", "--get", "remote.origin.url"], self._config.timeout_seconds)
        try:
            return check_remote(url.strip())
        except ValueError:
            # Never pass a URL with a password to git's command line, where ps would show it.
            raise FetchError(GIT_FAILED, "remote.origin.url carries credentials or is not a URL; set remote") from None

    async def _check(self) -> GitCheck:
        config, git = self._config, self._git
        path, limit = str(config.path), config.timeout_seconds
        remote = await self._remote()
        local_text, remote_text, counted = await asyncio.gather(
            git.output(["-C", path, "for-each-ref", "--format=%(objectname) %(refname)"], limit),
            git.output(["ls-remote", remote], limit, config if config.username is not None else None, remote),
            git.output(["-C", path, "count-objects", "-v"], limit),
        )
        comparison = compare(parse_refs(local_text), parse_refs(remote_text), config.counted)
        # Since when the mirror has differed, carried from the last good check: the check is the whole value.
        previous = self.state.refs.value.behind_since if self.state.refs.value is not None else None
        behind_since = None if comparison.in_step else (previous if previous is not None else time.time())
        return GitCheck(comparison, last_fetch(config.path), objects_bytes(counted), remote, behind_since)

    async def poll_once(self) -> None:
        await run_source(self.state.name, "git_refs", self.state.refs, self._check)


class GitMirrors:
    """The configured git mirrors and those ``git_mirrors_dir`` finds (looked for again every minute), each in its own
    loop of the fleet; ``states`` lists them in that order, kept by name."""

    def __init__(
        self,
        configured: list[GitMirrorConfig],
        find: Callable[[], list[GitMirrorConfig]],
        states: list[GitMirrorState],
        git: Git,
        fleet: Fleet[str],
    ) -> None:
        self._configured = configured
        self._find = find
        self._states = states
        self._git = git
        self._fleet = fleet

    async def follow(self) -> None:
        wanted = {c.name: c for c in [*self._configured, *self._find()]}
        kept = {s.name: s for s in self._states}
        states = [
            kept.get(name) or GitMirrorState(name, str(config.path), SourceState(own_interval=config.interval_seconds))
            for name, config in wanted.items()
        ]
        loops = {
            state.name: partial(
                poll_forever, GitMirrorPoller(state, config, self._git).poll_once, config.interval_seconds
            )
            for state, config in zip(states, wanted.values(), strict=True)
        }
        # Cancelling a loop kills and reaps the git command it was running (exporter/processes.py) before it ends.
        for name in await self._fleet.reconcile(loops):
            log.info("git mirror gone", extra={"git_mirror": name})
        self._states[:] = states

    async def run(self) -> None:
        await poll_forever(self.follow, 60.0)
