"""Worker processes for the sources' CPU-bound work, so the event loop only moves bytes.

At 100,000 repositories x 3 mirrors x 3 nodes, reading the node listings (the HTTP exchange itself), decoding and
comparing them is seconds of CPU per cycle; on the event loop it delayed every scrape and every other poll. A source
hands that work to a ``Worker``: one process with an asyncio loop of its own, which runs many calls at once (the
listing walks of a farm's nodes side by side, each waiting on its network), so that a key's state stays in one
process (``WorkerPool.worker(key)`` always answers the same worker for the same key).

The standard library has no tool for concurrent calls into one stateful process (``ProcessPoolExecutor`` runs one
call at a time per process and cannot pin state), so the channel is written here, in the fewest parts: a Unix socket
pair; each message a header (call id, length) and a pickle of ``(function, args)``, or of the answer; asyncio's
streams read and write it at both ends; ``function`` a coroutine function runs as a task in the worker (a cancel
message cancels it), a plain one runs to its end at once, in the order sent. docs/architecture.md, "Processes".

Processes are spawned (a fresh interpreter: none of the exporter's threads, sockets or secrets) and import the work's
modules (``preload``) before their first answer. A worker that dies (killed, out of memory) ends its socket: the calls
in flight fail with ``WorkerLost`` (a FetchError, so the source's poll fails and its values go stale, never wrong), the
next call starts a new process, ``generation`` grows (the work's state died with the process: callers send everything
again) and ``bitbucket_mirror_exporter_worker_restarts_total`` counts it. ``stop`` ends every process within
``STOP_SECONDS`` (terminate, then kill), leaving no child.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import itertools
import logging
import math
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import multiprocessing.process
import os
import pickle
import signal
import socket
import struct
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, overload

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from exporter.sources import UNEXPECTED, FetchError
from exporter.steps import unrationed

log = logging.getLogger("exporter")

T = TypeVar("T")

# The reason a poll fails with when its worker died under it.
WORKER_LOST = "worker_lost"
STOP_SECONDS = 2.0
WORKER_NICENESS = 10
# A message's header: the call's id and the length of the pickle that follows.
HEADER = struct.Struct("!QQ")
# The function of a message that cancels the call of the same id (a running coroutine).
CANCEL = None


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


# Spawned, not forked from a fork server: a fork server's preloaded modules stay shared with a worker only until the
# worker touches them (every reference count it changes copies the page), so the fork server cost 32 MB of PSS beside
# a worker that held its own copies anyway (measured at 100k x 3 x 3: 333 MB summed with it, 314 MB spawned). A
# spawned worker imports its modules itself (``preload``, before its first answer), about a second, once per start.
_SPAWN = multiprocessing.get_context("spawn")


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


@dataclass
class _Channel:
    """A running worker process and the loop's end of its socket."""

    process: multiprocessing.process.BaseProcess
    writer: asyncio.StreamWriter
    pending: dict[int, asyncio.Future[Any]] = field(default_factory=dict)
    reading: asyncio.Task[None] | None = None


class Worker:
    """One worker process, started at the first call."""

    def __init__(self, name: str, preload: Sequence[str], on_restart: Callable[[], None]) -> None:
        self.name = name
        self._preload = preload
        self._on_restart = on_restart
        self._channel: _Channel | None = None
        # Grows at each restart: whatever a caller left in the process before is gone.
        self.generation = 0
        self._stopped = False
        self._starting = asyncio.Lock()
        self._call_ids = itertools.count(1)

    def _spawn(self) -> tuple[multiprocessing.process.BaseProcess, socket.socket]:
        """A new process with its end of a socket pair (blocking: starting a process takes a few milliseconds to
        hand over, so this runs on a thread)."""
        mine, theirs = socket.socketpair()
        try:
            process = _SPAWN.Process(
                target=serve,
                args=(theirs, tuple(self._preload)),
                name=f"bitbucket-mirror-exporter worker {self.name}",
                daemon=True,
            )
            process.start()
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        return process, mine

    async def _open(self) -> _Channel:
        async with self._starting:
            if self._channel is not None:
                return self._channel
            try:
                process, mine = await asyncio.to_thread(self._spawn)
            except OSError as exc:
                raise WorkerLost(f"worker {self.name} could not start: {type(exc).__name__}") from None
            if self._stopped:  # stopped while it started: it must not outlive the stop
                mine.close()
                await asyncio.to_thread(_end, process)
                raise WorkerLost("the exporter is stopping")
            reader, writer = await asyncio.open_unix_connection(sock=mine)
            channel = self._channel = _Channel(process, writer)
            channel.reading = asyncio.create_task(self._read_answers(channel, reader), name=f"worker {self.name}")
            return channel

    @overload
    async def call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T: ...

    @overload
    async def call(self, function: Callable[..., T], *args: Any) -> T: ...

    async def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` in the worker process (awaited there when it is a coroutine function); WorkerLost
        when the process died meanwhile (a new one starts at the next call)."""
        if self._stopped:
            raise WorkerLost("the exporter is stopping")
        channel = await self._open()
        call_id = next(self._call_ids)
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        channel.pending[call_id] = answer
        message = pickle.dumps((function, args), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            channel.writer.write(HEADER.pack(call_id, len(message)))
            channel.writer.write(message)
            await channel.writer.drain()
        except (ConnectionError, OSError):
            pass  # the process is gone: the reading task fails the answer with WorkerLost
        try:
            return await answer
        except asyncio.CancelledError:
            channel.pending.pop(call_id, None)
            if not channel.writer.is_closing():
                cancel = pickle.dumps((CANCEL, ()))
                channel.writer.write(HEADER.pack(call_id, len(cancel)) + cancel)
            raise

    async def _read_answers(self, channel: _Channel, reader: asyncio.StreamReader) -> None:
        """Each answer to its call, until the process ends its socket (it died, or was stopped)."""
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, OSError):
            while True:
                call_id, size = HEADER.unpack(await reader.readexactly(HEADER.size))
                message = await reader.readexactly(size)
                answer = channel.pending.pop(call_id, None)
                if answer is None or answer.done():
                    continue  # a call cancelled meanwhile
                try:
                    succeeded, value = pickle.loads(message)
                except Exception as exc:  # an answer this process cannot read fails that call only
                    answer.set_exception(FetchError(UNEXPECTED, f"unreadable answer: {type(exc).__name__}"))
                    continue
                if succeeded:
                    answer.set_result(value)
                else:
                    answer.set_exception(value)
        await self._lost(channel)

    async def _lost(self, channel: _Channel) -> None:
        if self._channel is channel:
            self._channel = None
        channel.writer.close()
        stopping = self._stopped
        if not stopping:
            self.generation += 1
            self._on_restart()
            log.warning("worker process died; restarted", extra={"worker": self.name})
        detail = "the exporter is stopping" if stopping else f"worker {self.name} died; restarted"
        for answer in channel.pending.values():
            if not answer.done():
                answer.set_exception(WorkerLost(detail))
        channel.pending.clear()
        await asyncio.to_thread(_end, channel.process)  # joining blocks: off the event loop

    def reading(self) -> asyncio.Task[None] | None:
        """The loop's task reading the process's answers, while one runs."""
        channel = self._channel
        return channel.reading if channel is not None else None

    def pids(self) -> list[int]:
        channel = self._channel
        pid = channel.process.pid if channel is not None else None
        return [pid] if pid is not None else []

    def stop(self) -> None:
        """The process ended (from any thread): its socket then ends, and the loop's reading task with it."""
        self._stopped = True
        channel = self._channel
        if channel is not None:
            _end(channel.process)


class InlineWorker(Worker):
    """Runs each call in this process, on the event loop: for tests that drive pollers by hand without processes
    (tests/unit), where the work's module state is this process's own."""

    @overload
    async def call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T: ...

    @overload
    async def call(self, function: Callable[..., T], *args: Any) -> T: ...

    async def call(self, function: Callable[..., Any], *args: Any) -> Any:
        result = function(*args)
        return await result if inspect.isawaitable(result) else result


def _end(process: multiprocessing.process.BaseProcess) -> None:
    """Stop ``process`` without waiting for its work: terminate it, kill it after STOP_SECONDS / 2."""
    if process.is_alive():
        process.terminate()
    process.join(STOP_SECONDS / 2)
    if process.is_alive():
        process.kill()
        process.join(STOP_SECONDS / 2)


def serve(sock: socket.socket, preload: Sequence[str] = ()) -> None:
    """A worker process's life: import the work's modules, then answer the loop's calls until it closes its end."""
    _start_worker()
    for module in preload:
        importlib.import_module(module)
    asyncio.run(_serve(sock))


async def _serve(sock: socket.socket) -> None:
    unrationed()  # the loop's ration keeps scrapes waiting for a few starts; no scrape waits here
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    running: dict[int, asyncio.Task[None]] = {}

    def answer(call_id: int, succeeded: bool, value: Any) -> None:
        try:
            message = pickle.dumps((succeeded, value), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # an answer that cannot cross fails its call, not the worker
            error = FetchError(UNEXPECTED, f"an answer that cannot be sent: {type(exc).__name__}")
            message = pickle.dumps((False, error))
        writer.write(HEADER.pack(call_id, len(message)))
        writer.write(message)

    async def run(call_id: int, function: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            value = await function(*args)
        except asyncio.CancelledError:
            return  # the loop gave up on this call: nobody waits for its answer
        except Exception as exc:  # the caller's error, sent to it
            answer(call_id, False, exc)
        else:
            answer(call_id, True, value)
        finally:
            running.pop(call_id, None)
        await writer.drain()

    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while True:
            call_id, size = HEADER.unpack(await reader.readexactly(HEADER.size))
            message = await reader.readexactly(size)
            try:
                function, args = pickle.loads(message)
            except Exception as exc:  # a call this process cannot read fails alone
                answer(call_id, False, FetchError(UNEXPECTED, f"unreadable call: {type(exc).__name__}"))
                continue
            if function is CANCEL:
                task = running.get(call_id)
                if task is not None:
                    task.cancel()
            elif inspect.iscoroutinefunction(function):
                running[call_id] = asyncio.create_task(run(call_id, function, args))
            else:
                try:
                    answer(call_id, True, function(*args))
                except Exception as exc:  # the caller's error, sent to it
                    answer(call_id, False, exc)
                await writer.drain()


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
        """The first worker started now (it imports the work's modules: about a second), so the first poll cycle
        does not wait for that; the others start when a key first needs them."""
        with contextlib.suppress(WorkerLost):
            await self._workers[0].call(os.getpid)

    async def stop(self) -> None:
        """Every process ended, within STOP_SECONDS (off the event loop: joining blocks), and the loop's reading
        of each one's socket with it."""
        reading = [worker.reading() for worker in self._workers]
        await asyncio.to_thread(self.stop_now)
        waits = [task for task in reading if task is not None]
        if waits:
            await asyncio.wait(waits, timeout=STOP_SECONDS)

    def stop_now(self) -> None:
        for worker in self._workers:
            worker.stop()

    def collect(self) -> Iterator[Metric]:
        restarts = CounterMetricFamily(
            "bitbucket_mirror_exporter_worker_restarts",
            "Worker processes (which walk, decode and compare the listings) that died and were restarted; a restarted "
            "worker's mirrors show no drift until their next cycle.",
            labels=[],
        )
        restarts.add_metric([], self.restarts)
        size = GaugeMetricFamily(
            "bitbucket_mirror_exporter_worker_processes",
            "Worker processes the exporter runs to walk, decode and compare the listings (--workers.processes).",
        )
        size.add_metric([], self.size)
        yield from (restarts, size)
