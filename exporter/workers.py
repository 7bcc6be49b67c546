"""Worker processes for the sources' CPU-bound work, so the event loop only moves bytes.

At 100,000 repositories x 3 mirrors x 3 nodes, decoding the listings and comparing them is seconds of CPU per cycle;
on the event loop it delayed every scrape and every other poll. A source hands that work to a ``Worker``: one
process of ``concurrent.futures.ProcessPoolExecutor`` (the standard library's pool, one process each, so that a
key's state stays in one process: ``WorkerPool.worker(key)`` always answers the same worker for the same key).

Processes start from a fork server that has imported the work's modules once (``preload``), so they share those
pages and a new one starts in milliseconds; they never receive a secret (only page bytes and the names of
listings).

A worker that dies (killed, out of memory) breaks its executor: the call in flight fails with ``WorkerLost`` (a
FetchError, so the source's poll fails and its values go stale, never wrong), the executor is replaced by a new
process, ``generation`` grows (the work's state died with the process: callers send everything again) and
``bitbucket_mirror_exporter_worker_restarts_total`` counts it. ``stop`` ends every process within ``STOP_SECONDS``
(terminate, then kill), leaving no child.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import logging
import math
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import multiprocessing.process
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from exporter.sources import FetchError

log = logging.getLogger("exporter")

T = TypeVar("T")

# The reason a poll fails with when its worker died under it.
WORKER_LOST = "worker_lost"
STOP_SECONDS = 2.0
WORKER_NICENESS = 10


class WorkerLost(FetchError):
    def __init__(self, detail: str) -> None:
        super().__init__(WORKER_LOST, detail)


def _start_worker() -> None:
    """In a worker, first: Ctrl-C reaches the whole process group, but only the exporter decides when a worker ends;
    and when the exporter itself is gone (killed, crashed) the worker ends too, rather than live on as an orphan
    holding its pipes (a worker's task queue holds both of its own ends, so it would never read an end of file)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The event loop answers scrapes and moves bytes: where the two contend for a core, it goes first, and a
    # worker takes what is left (a cycle's work waits a little; a scrape does not).
    os.nice(WORKER_NICENESS)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_end_with, args=(parent.sentinel,), name="parent-watch", daemon=True).start()


def _end_with(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(0)


_context_lock = threading.Lock()
_contexts: dict[tuple[str, ...], multiprocessing.context.BaseContext] = {}


def _context(preload: Sequence[str]) -> multiprocessing.context.BaseContext:
    """The fork server context (one fork server per process, started with the first worker): a worker forked from
    it shares the preloaded modules' pages and none of the exporter's threads, sockets or secrets."""
    with _context_lock:
        context = _contexts.get(tuple(preload))
        if context is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(list(preload))
            _contexts[tuple(preload)] = context
        return context


def main_module_by_name(name: str = "exporter.__main__") -> None:
    """For an entry point started as a script (the console script ``bitbucket-mirror-exporter``, a bench client):
    multiprocessing runs a main module given by its path again in every worker before the first task, which would
    import the whole command line into each of them. The workers need none of it (their work is imported by name,
    ``preload``), so the main module is named as ``python -m exporter`` names it, which multiprocessing leaves
    alone."""
    main = sys.modules["__main__"]
    if getattr(main, "__spec__", None) is None:
        main.__spec__ = importlib.util.find_spec(name)


# cgroup v2's CPU limit ("max 100000", or "200000 100000" for two cores): a container sees every core of its node in
# its affinity, and the limit only here.
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The cores this process may use: its affinity, bounded by its cgroup's CPU limit (a Kubernetes CPU limit)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit to read: the affinity stands
    return cores


def default_size() -> int:
    """One core for the event loop, the rest for workers; at least one worker."""
    return max(1, usable_cores() - 1)


class Worker:
    """One worker process, started at the first call."""

    def __init__(self, name: str, preload: Sequence[str], on_restart: Callable[[], None]) -> None:
        self.name = name
        self._preload = preload
        self._on_restart = on_restart
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        # Grows at each restart: whatever a caller left in the process before is gone.
        self.generation = 0
        self._stopped = False
        self._starting = asyncio.Lock()

    def _started(self) -> concurrent.futures.ProcessPoolExecutor:
        """A new executor with its process running (blocking: starting a process, and the fork server the first
        time, takes up to a second, so this runs on a thread)."""
        executor = concurrent.futures.ProcessPoolExecutor(
            max_workers=1, mp_context=_context(self._preload), initializer=_start_worker
        )
        executor.submit(os.getpid).result(timeout=60)
        return executor

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in the worker process; WorkerLost when the process died meanwhile (it is replaced for
        the next call)."""
        if self._stopped:
            raise WorkerLost("the exporter is stopping")
        async with self._starting:
            if self._executor is None:
                try:
                    started = await asyncio.to_thread(self._started)
                except (BrokenProcessPool, OSError, concurrent.futures.TimeoutError) as exc:
                    raise WorkerLost(f"worker {self.name} could not start: {type(exc).__name__}") from None
                if self._stopped:  # stopped while it started: it must not outlive the stop
                    await asyncio.to_thread(_end, started)
                    raise WorkerLost("the exporter is stopping")
                self._executor = started
        executor = self._executor
        if executor is None:
            raise WorkerLost("the exporter is stopping")
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, function, *args)
        except BrokenProcessPool:
            await self._replace(executor)
            raise WorkerLost(f"worker {self.name} died; restarted") from None

    async def _replace(self, broken: concurrent.futures.ProcessPoolExecutor) -> None:
        if self._executor is not broken:
            return  # another call saw the same death first
        self._executor = None
        self.generation += 1
        self._on_restart()
        log.warning("worker process died; restarted", extra={"worker": self.name})
        await asyncio.to_thread(_end, broken)  # joining blocks: off the event loop

    def pids(self) -> list[int]:
        if self._executor is None:
            return []
        return [process.pid for process in _processes(self._executor) if process.pid is not None]

    def stop(self) -> None:
        self._stopped = True
        executor, self._executor = self._executor, None
        if executor is not None:
            _end(executor)


class InlineWorker(Worker):
    """Runs each call in this process, on the event loop: for tests that drive pollers by hand without processes
    (tests/unit), where the work's module state is this process's own."""

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        return function(*args)


def _processes(executor: concurrent.futures.ProcessPoolExecutor) -> list[multiprocessing.process.BaseProcess]:
    """The executor's processes. ProcessPoolExecutor has no public way to name them (or to end one that is busy):
    they are read from the executor."""
    return list((getattr(executor, "_processes", None) or {}).values())


def _end(executor: concurrent.futures.ProcessPoolExecutor) -> None:
    """Stop ``executor`` without waiting for its work: terminate its process, kill it after STOP_SECONDS."""
    processes = _processes(executor)
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + STOP_SECONDS / 2
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join(STOP_SECONDS / 2)


class WorkerPool:
    """``size`` workers; ``worker(key)`` gives each key (a mirror farm) a worker of its own for its whole life, in
    turn, so keys spread evenly."""

    def __init__(self, preload: Sequence[str], size: int | None = None, kind: type[Worker] = Worker) -> None:
        self.size = max(1, size if size is not None else default_size())
        self.restarts = 0
        self._workers = [kind(f"{index}", preload, self._count_restart) for index in range(self.size)]
        self._assigned: dict[str, Worker] = {}

    def _count_restart(self) -> None:
        self.restarts += 1

    def worker(self, key: str) -> Worker:
        assigned = self._assigned.get(key)
        if assigned is None:
            assigned = self._assigned[key] = self._workers[len(self._assigned) % self.size]
        return assigned

    def assigned(self) -> list[Worker]:
        """The workers that have at least one key (the others are never started)."""
        return [worker for worker in self._workers if worker in self._assigned.values()]

    def pids(self) -> list[int]:
        return [pid for worker in self._workers for pid in worker.pids()]

    async def start(self) -> None:
        """The first worker started now (and with it the fork server, which imports the work's modules: the slow
        part), so the first poll cycle does not wait for that; the others start when a key first needs them."""
        with contextlib.suppress(WorkerLost):
            await self._workers[0].call(os.getpid)

    async def stop(self) -> None:
        """Every process ended, within STOP_SECONDS (off the event loop: joining blocks)."""
        await asyncio.to_thread(self.stop_now)

    def stop_now(self) -> None:
        for worker in self._workers:
            worker.stop()

    def collect(self) -> Iterator[Metric]:
        restarts = CounterMetricFamily(
            "bitbucket_mirror_exporter_worker_restarts",
            "Worker processes (which decode and compare the listings) that died and were restarted; a restarted "
            "worker's mirrors show no drift until their next cycle.",
            labels=[],
        )
        restarts.add_metric([], self.restarts)
        size = GaugeMetricFamily(
            "bitbucket_mirror_exporter_worker_processes",
            "Worker processes the exporter runs for the listings' decoding and comparison (poll.worker_processes).",
        )
        size.add_metric([], self.size)
        yield from (restarts, size)
