"""Every background task of one configuration, owned by one ``asyncio.TaskGroup``.

Sets of targets change while the exporter runs: mirrors the primary lists (discover_mirrors), a farm's nodes
(farmNodes), JMX nodes, git mirrors under git_mirrors_dir. Each set is a ``Fleet``: ``reconcile`` starts a task for
each new key, cancels and awaits the tasks of keys no longer wanted, and keeps the rest. ``stop`` cancels and awaits
everything, fleets and single tasks alike, so no task outlives its configuration.

A task that raises is logged and ends alone: a bug in one poll loop must not cancel the others (a bare TaskGroup
would cancel every sibling).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Hashable, Iterable, Mapping
from typing import Any, Generic, TypeVar

log = logging.getLogger("exporter.supervisor")

K = TypeVar("K", bound=Hashable)
Work = Coroutine[Any, Any, None]


class Supervisor:
    """Call ``start`` (inside the event loop), then ``spawn`` or ``fleet``; ``stop`` ends everything."""

    def __init__(self) -> None:
        self._group: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start (or, after ``stop``, start again) holding tasks."""
        started = asyncio.Event()
        self._stopping = asyncio.Event()

        async def hold() -> None:
            async with asyncio.TaskGroup() as group:
                self._group = group
                started.set()
                await self._stopping.wait()
                await end(self._tasks)

        self._runner = asyncio.create_task(hold())
        await started.wait()

    def spawn(self, work: Work, name: str) -> asyncio.Task[None]:
        """Run ``work`` until it ends or ``stop``; its task leaves the supervisor's set when it ends."""
        if self._group is None or self._stopping.is_set():
            work.close()
            raise RuntimeError("the supervisor is not running")
        task = self._group.create_task(_guarded(work, name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # A task cancelled before its first step never started ``work``: close it, or Python warns it was never
        # awaited (closing a finished coroutine does nothing).
        task.add_done_callback(lambda _: work.close())
        return task

    def fleet(self, kind: str) -> Fleet[Any]:
        """A set of tasks keyed by target, reconciled as a whole (``kind`` names it in logs and task names)."""
        return Fleet(self, kind)

    @property
    def running(self) -> int:
        """Tasks not yet ended (a test checks that a stop leaves none)."""
        return len(self._tasks)

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner


async def end(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended, cancelling again any that goes on: Python 3.11's
    ``asyncio.wait_for`` returns a result that arrives with the cancellation and drops the cancellation (gh-86296),
    and a poll loop that lost it would sleep on forever."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)


async def _guarded(work: Work, name: str) -> None:
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("background task failed", extra={"task": name})


class Fleet(Generic[K]):
    """One changing set of targets: a task per key."""

    def __init__(self, supervisor: Supervisor, kind: str) -> None:
        self._supervisor = supervisor
        self._kind = kind
        self._tasks: dict[K, asyncio.Task[None]] = {}

    async def reconcile(self, wanted: Mapping[K, Callable[[], Work]]) -> list[K]:
        """Start ``wanted[key]()`` for each key not running, cancel and await those no longer wanted; keep the rest.
        Returns the keys that were stopped. A key that carries what makes a target different (its URL too) restarts
        the target when that changes."""
        gone = [key for key in self._tasks if key not in wanted]
        await end([self._tasks.pop(key) for key in gone])
        for key, start in wanted.items():
            if key not in self._tasks or self._tasks[key].done():
                self._tasks[key] = self._supervisor.spawn(start(), f"{self._kind}:{key}")
        return gone

    def __len__(self) -> int:
        return len(self._tasks)

    def keys(self) -> list[K]:
        return list(self._tasks)
