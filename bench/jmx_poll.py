"""What one JMX poll of a mirror node costs: a jmxquery JVM start plus the query, against a real JVM over JMX.

Prints wall time and CPU time (user + system of the child JVM) per poll, for the JVM options the exporter uses by
default and for none, next to the baseline of a bare JVM start (``java -version``) measured in the same run.

    python3 bench/jmx_poll.py [--polls 10]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.jmx.config import DEFAULT_JAVA_OPTIONS
from exporter.jmx.query import jmxquery_command, run_jmxquery
from tests.jmx_node import INCREMENTAL, SNAPSHOT, TICKETS, Timer, compile_fake_node, fake_node


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def measure(polls: int, run: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """Median wall seconds and mean CPU seconds per run."""
    walls = []
    cpu_before = child_cpu()
    for _ in range(polls):
        started = time.perf_counter()
        await run()
        walls.append(time.perf_counter() - started)
    return statistics.median(walls), (child_cpu() - cpu_before) / polls


async def bare_jvm(options: list[str]) -> None:
    process = await asyncio.create_subprocess_exec(
        "java", *options, "-version", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    await process.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=10)
    args = parser.parse_args()
    classes = compile_fake_node(Path(tempfile.mkdtemp(prefix="bench-jmx-")))
    async with fake_node(classes) as node:
        await node.timer(INCREMENTAL, Timer())
        await node.timer(SNAPSHOT, Timer())
        await node.gauge(TICKETS, Available=8, Used=2)

        def poll(options: list[str]) -> Callable[[], Awaitable[object]]:
            command = jmxquery_command("java", options, node.url, None, None, ["com.atlassian.bitbucket*:*"])
            return lambda: run_jmxquery(command, 60)

        cases = [
            ("baseline: bare JVM start (java -version)", lambda: bare_jvm([])),
            ("baseline: bare JVM start, default options", lambda: bare_jvm(DEFAULT_JAVA_OPTIONS)),
            ("jmxquery poll, no JVM options", poll([])),
            ("jmxquery poll, -XX:TieredStopAtLevel=1", poll(["-XX:TieredStopAtLevel=1"])),
            ("jmxquery poll, -XX:+UseSerialGC", poll(["-XX:+UseSerialGC"])),
            ("jmxquery poll, -Xint", poll(["-Xint"])),
            ("jmxquery poll, default jmx.java_options", poll(DEFAULT_JAVA_OPTIONS)),
        ]
        await poll(DEFAULT_JAVA_OPTIONS)()  # warm the page cache for the jar
        print(f"{'case':46} {'wall median':>12} {'CPU mean':>10}   ({args.polls} runs each)")
        results = {}
        for name, run in cases:
            wall, cpu = await measure(args.polls, run)
            results[name] = cpu
            print(f"{name:46} {wall * 1000:10.0f}ms {cpu * 1000:8.0f}ms")
    default_cpu = results["jmxquery poll, default jmx.java_options"]
    plain_cpu = results["jmxquery poll, no JVM options"]
    print(f"default options save {(1 - default_cpu / plain_cpu) * 100:.0f}% CPU per poll against no options")
    print(f"at the default jmx.interval_seconds (60): {default_cpu / 60 * 100:.2f}% of one core per node")


if __name__ == "__main__":
    asyncio.run(main())
