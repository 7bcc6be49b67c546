"""Running a child process from the event loop with a hard time limit: in its own process group, killed with all
its children when the limit passes, and reaped. Shared by the JMX queries (a JVM) and the git commands. And
``descendants``: every process below one (the worker processes and multiprocessing's resource tracker, for a test or
the bench)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


class Timeout(Exception):
    """The process did not finish within its limit; it and its group were killed."""


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: bytes
    stderr: bytes


def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        # The whole group: a launcher (java, git's helpers) could leave a child behind.
        os.killpg(process.pid, signal.SIGKILL)


async def run(command: list[str], time_limit: float, env: Mapping[str, str] | None = None) -> Finished:
    """Run ``command`` (no shell) and collect its output; OSError when it cannot start, Timeout past the limit."""
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        env=dict(env) if env is not None else None,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), time_limit)
    except TimeoutError:
        raise Timeout(f"no answer within {time_limit:g} s") from None
    finally:
        if process.returncode is None:
            _kill(process)
            # Reap it so no zombie is left, and read its pipes to their end so asyncio closes its transport now, not
            # when it is garbage (perhaps after the event loop has closed); SIGKILL cannot be ignored, so this is
            # prompt.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.communicate(), 5)
    return Finished(process.returncode or 0, out, err)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the children of each of its threads, and theirs), from /proc (Linux)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:  # the process or thread ended meanwhile
                continue
            found += children
            pending += children
    return found
