"""exporter/processes.py with real child processes: past its limit a command is killed with its group, and a
cancelled command is killed and its pipes read to their end before the cancellation goes on, so no transport
outlives the event loop."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from exporter.processes import Finished, Timeout, run

TIMEOUT = 10.0


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def open_pipes() -> int:
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if fd.exists() and os.readlink(fd).startswith("pipe:"))


def pid_in(pid_file: Path) -> int | None:
    text = pid_file.read_text().strip() if pid_file.exists() else ""
    return int(text) if text else None


async def started_shell(task: asyncio.Task[Finished], pid_file: Path) -> int:
    deadline = time.monotonic() + TIMEOUT
    while (pid := pid_in(pid_file)) is None:
        assert time.monotonic() < deadline and not task.done(), "the command never started"
        await asyncio.sleep(0.01)
    return pid


async def test_a_command_past_its_limit_is_killed_with_its_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    task = asyncio.create_task(run(["sh", "-c", f"sleep 30 & echo $! > {pid_file}; wait"], time_limit=0.5))
    grandchild = await started_shell(task, pid_file)
    with pytest.raises(Timeout):
        await asyncio.wait_for(task, TIMEOUT)
    deadline = time.monotonic() + TIMEOUT
    while alive(grandchild):
        assert time.monotonic() < deadline, "the command's own child outlived it"
        await asyncio.sleep(0.01)


async def test_a_cancelled_command_is_killed_and_its_pipes_closed_before_the_cancellation_goes_on(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "pid"
    task = asyncio.create_task(run(["sh", "-c", f"echo $$ > {pid_file}; exec sleep 30"], time_limit=60))
    pid = await started_shell(task, pid_file)
    pipes = open_pipes()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, TIMEOUT)
    assert not alive(pid), "killed by the time the cancellation went on"
    assert open_pipes() == pipes - 2, "its stdout and stderr read to their end and closed, not left to the garbage"
