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
from dataclasses import dataclass
from pathlib import Path

from exporter.git.command import GIT_FAILED, Git
from exporter.git.config import GitMirrorConfig, check_remote
from exporter.git.refs import compare, objects_bytes, parse_refs
from exporter.sources import FetchError, poll_forever, run_source
from exporter.state import GitCheck, GitMirrorState

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
        now = time.time()
        previous = self.state.behind_since
        self.state.behind_since = None if comparison.in_step else (previous if previous is not None else now)
        return GitCheck(comparison, last_fetch(config.path), objects_bytes(counted), remote)

    async def poll_once(self) -> None:
        await run_source(self.state.name, "git_refs", self.state.refs, self._check)


@dataclass
class _Running:
    poller: GitMirrorPoller
    task: asyncio.Task[None]


class GitMirrors:
    """The configured git mirrors and those ``git_mirrors_dir`` finds (looked for again every minute)."""

    def __init__(
        self,
        configured: list[GitMirrorConfig],
        find: Callable[[], list[GitMirrorConfig]],
        states: list[GitMirrorState],
        git: Git,
        stop: asyncio.Event,
        stale_after: float,
    ) -> None:
        self._configured = configured
        self._find = find
        self._states = states
        self._git = git
        self._stop = stop
        self._stale_after = stale_after
        self._running: dict[str, _Running] = {}
        self._ending: set[asyncio.Task[None]] = set()

    def follow(self) -> None:
        wanted = {c.name: c for c in [*self._configured, *self._find()]}
        for name in [n for n in self._running if n not in wanted]:
            gone = self._running.pop(name).task
            gone.cancel()
            # Awaited at the end too: a git command it was running is killed and reaped before the loop closes.
            self._ending.add(gone)
            gone.add_done_callback(self._ending.discard)
            log.info("git mirror gone", extra={"git_mirror": name})
        kept = {s.name: s for s in self._states}
        self._states[:] = []
        for name, config in wanted.items():
            state = kept.get(name) or GitMirrorState(
                name, str(config.path), max(self._stale_after, 3 * config.interval_seconds)
            )
            self._states.append(state)
            if name not in self._running:
                poller = GitMirrorPoller(state, config, self._git)
                task = asyncio.create_task(poll_forever(poller, config.interval_seconds, self._stop))
                self._running[name] = _Running(poller, task)

    async def poll_once(self) -> None:
        self.follow()

    async def run(self) -> None:
        try:
            await poll_forever(self, 60.0, self._stop)
        finally:
            running = [r.task for r in self._running.values()]
            for task in running:
                task.cancel()
            # The gone ones were cancelled when they went: cancelled again, they could not finish reaping their git.
            await asyncio.gather(*running, *self._ending, return_exceptions=True)
