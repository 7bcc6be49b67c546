"""Git reference mirrors: what one check of 1,000 mirrors costs (each is checked once per 60 s interval), in one run.

    python3 bench/git_mirrors.py                        # writes bench/results/git_mirrors.{md,json}
    python3 bench/git_mirrors.py --mirrors 20 --cycles 1 --out /tmp/git   # a quick look

The mirrors are real bare repositories (copies of one `git clone --mirror`, each with its own remote.origin.url and
FETCH_HEAD), found the way `git_mirrors_dir` finds them; 1% of them (at least one) have a branch set back, so they are
behind. Each cycle checks every mirror once through the exporter's own poller (`GitMirrorPoller.poll_once`:
for-each-ref, ls-remote over file://, count-objects, and the origin lookup, through one `Git` with `git_concurrency`
slots), which is the work every mirror's own 60 s timer does once per interval. Measured per cycle: wall seconds, the
exporter process's CPU, its git children's CPU (reaped, so in RUSAGE_CHILDREN), git processes the exporter started
(`Git.spawned`), all tasks the machine created (/proc/stat's `processes`: git's helpers such as git-upload-pack and
the threads asyncio's child watcher starts for each child included), and the longest stall of the event loop (what a
scrape would wait). The baseline in the same run is a bare `git --version` spawned as often, at the same concurrency:
the part of the cost that is just starting processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from exporter.git.collector import git_metrics  # noqa: E402
from exporter.git.command import Git  # noqa: E402
from exporter.git.config import GitMirrorsDirConfig  # noqa: E402
from exporter.git.poller import GitMirrorPoller  # noqa: E402
from exporter.git.state import GitMirrorState  # noqa: E402
from exporter.sources import SourceState  # noqa: E402

INTERVAL = 60.0
IDENTITY = ["-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]


def git(*args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(["git", *IDENTITY, *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=60)
    return result.stdout


def make_remote(work: Path, branches: int, tags: int) -> Path:
    """A bare remote with `branches` branches, `tags` tags and a pull-request ref (which must not count)."""
    source, remote = work / "source", work / "remote.git"
    git("init", "-q", "-b", "main", str(source))
    git("commit", "-q", "--allow-empty", "-m", "first", cwd=source)
    git("commit", "-q", "--allow-empty", "-m", "second", cwd=source)
    for i in range(branches):
        git("branch", f"branch-{i}", cwd=source)
    for i in range(tags):
        git("tag", f"v{i}", cwd=source)
    git("update-ref", "refs/pull-requests/1/from", "HEAD", cwd=source)
    git("clone", "-q", "--mirror", str(source), str(remote))
    return remote


def make_mirrors(work: Path, remote: Path, count: int, behind: int) -> Path:
    """`count` bare mirrors of `remote` under work/mirrors; the first `behind` have branch-0 one commit back."""
    template, directory = work / "template.git", work / "mirrors"
    git("clone", "-q", "--mirror", f"file://{remote}", str(template))
    git("fetch", "-q", "--prune", cwd=template)  # writes FETCH_HEAD, as a syncer's fetch does
    older = git("rev-parse", "main~1", cwd=template).strip()
    directory.mkdir()
    for i in range(count):
        copy = directory / f"m{i:05d}.git"
        shutil.copytree(template, copy, symlinks=True)
        if i < behind:
            git("update-ref", "refs/heads/branch-0", older, cwd=copy)
    return directory


def forks() -> int:
    """Processes and threads created on this machine since boot."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("processes "):
            return int(line.split()[1])
    raise RuntimeError("/proc/stat has no processes line")


async def stall_watch(running: asyncio.Event, stalls: list[float]) -> None:
    """The event loop's longest delay past a 10 ms sleep: how long a scrape could have waited."""
    while not running.is_set():
        started = time.monotonic()
        await asyncio.sleep(0.01)
        stalls.append(time.monotonic() - started - 0.01)


async def measured(work: Any) -> dict[str, float]:
    """Wall, own and children's CPU, forks and the longest event-loop stall of one awaited piece of work."""
    done, stalls = asyncio.Event(), [0.0]
    watcher = asyncio.create_task(stall_watch(done, stalls))
    before, forked, started = os.times(), forks(), time.monotonic()
    await work
    wall = time.monotonic() - started
    after, forked = os.times(), forks() - forked
    done.set()
    await watcher
    return {
        "wall_s": wall,
        "cpu_s": after.user + after.system - before.user - before.system,
        "children_cpu_s": after.children_user + after.children_system - before.children_user - before.children_system,
        "forks": forked,
        "max_loop_stall_ms": max(stalls) * 1000,
    }


async def check_all(pollers: list[GitMirrorPoller]) -> None:
    await asyncio.gather(*(p.poll_once() for p in pollers))


async def spawn_only(count: int, concurrency: int) -> None:
    """The baseline: `count` bare `git --version` processes through the same runner and slots."""
    git_runner = Git(concurrency)
    await asyncio.gather(*(git_runner.output(["--version"], 30.0) for _ in range(count)))


async def measure(mirrors: int, cycles: int, concurrency: int, branches: int, tags: int, work: Path) -> dict[str, Any]:
    behind = max(1, mirrors // 100)
    remote = make_remote(work, branches, tags)
    directory = make_mirrors(work, remote, mirrors, behind)
    found = GitMirrorsDirConfig(glob=f"{directory}/*.git").found()
    runner = Git(concurrency)
    states = [GitMirrorState(c.name, str(c.path), SourceState(own_interval=c.interval_seconds)) for c in found]
    pollers = [GitMirrorPoller(s, c, runner) for s, c in zip(states, found, strict=True)]
    rows = []
    for _ in range(cycles):
        spawned = runner.spawned
        row = await measured(check_all(pollers))
        row["spawned"] = runner.spawned - spawned
        rows.append(row)
    failed = [s.name for s in states if s.refs.success is not True]
    checks = [s.refs.value for s in states if s.refs.value is not None]
    seen_behind = sorted(s.name for s in states if s.refs.value is not None and not s.refs.value.comparison.in_step)
    started = time.perf_counter()
    samples = sum(len(m.samples) for m in git_metrics(states, time.time(), 90.0))
    render_ms = (time.perf_counter() - started) * 1000
    baseline = [await measured(spawn_only(int(rows[0]["spawned"]), concurrency)) for _ in range(cycles)]

    def median(key: str, of: list[dict[str, float]]) -> float:
        return statistics.median(r[key] for r in of)

    keys = ("wall_s", "cpu_s", "children_cpu_s", "forks", "max_loop_stall_ms")
    cycle = {k: median(k, rows) for k in (*keys, "spawned")}
    floor = {k: median(k, baseline) for k in keys}
    return {
        "mirrors": mirrors,
        "refs_per_mirror": {"counted": branches + tags + 1, "pull_requests": 1},
        "concurrency": concurrency,
        "interval_s": INTERVAL,
        "cycles": rows,
        "cycle": cycle,
        "spawn_only": floor,
        "cores_busy_per_interval": (cycle["cpu_s"] + cycle["children_cpu_s"]) / INTERVAL,
        "failed": failed,
        "behind_truth": behind,
        "behind_seen": len(seen_behind),
        "counted_refs_seen": sorted({c.comparison.local for c in checks}),
        "samples": samples,
        "render_ms": render_ms,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        + git("--version").strip(),
    }


def report(result: dict[str, Any]) -> str:
    cycle, floor = result["cycle"], result["spawn_only"]
    lines = [
        "# Git reference mirrors: one check of every mirror",
        "",
        f"{result['mirrors']} bare mirrors ({result['refs_per_mirror']['counted']} counted refs and a pull-request ref "
        f"each, remotes over file://), `git_concurrency` {result['concurrency']}, median of "
        f"{len(result['cycles'])} cycles. Machine: {result['machine']}.",
        "",
        "| | wall s | exporter CPU s | git CPU s | git processes started | tasks created (helpers, threads) "
        "| longest loop stall ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| check of every mirror | {cycle['wall_s']:.1f} | {cycle['cpu_s']:.2f} | {cycle['children_cpu_s']:.2f} | "
        f"{cycle['spawned']:.0f} | {cycle['forks']:.0f} | {cycle['max_loop_stall_ms']:.0f} |",
        f"| spawn only (`git --version` as often) | {floor['wall_s']:.1f} | {floor['cpu_s']:.2f} | "
        f"{floor['children_cpu_s']:.2f} | {cycle['spawned']:.0f} | {floor['forks']:.0f} | "
        f"{floor['max_loop_stall_ms']:.0f} |",
        "",
        f"- Per {result['interval_s']:.0f} s interval: {result['cores_busy_per_interval']:.2f} cores busy on average "
        f"(exporter and git CPU over the interval); one check of every mirror fits in the interval "
        f"{result['interval_s'] / cycle['wall_s']:.1f} times.",
        f"- Per mirror: {cycle['spawned'] / result['mirrors']:.1f} git processes, "
        f"{cycle['forks'] / result['mirrors']:.1f} tasks created, "
        f"{(cycle['cpu_s'] + cycle['children_cpu_s']) / result['mirrors'] * 1000:.1f} ms CPU.",
        f"- Truth: {result['behind_seen']} mirrors seen behind of {result['behind_truth']} set back; "
        f"{len(result['failed'])} checks failed; counted refs seen per mirror {result['counted_refs_seen']}.",
        f"- Rendering the git metrics ({result['samples']} samples): {result['render_ms']:.1f} ms. "
        f"Peak RSS of the benchmark process: {result['peak_rss_mb']:.0f} MB.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirrors", type=int, default=1000)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--branches", type=int, default=20)
    parser.add_argument("--tags", type=int, default=20)
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-git-") as work:
        result = asyncio.run(measure(args.mirrors, args.cycles, args.concurrency, args.branches, args.tags, Path(work)))
    text = report(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "git_mirrors.md").write_text(text)
    (args.out / "git_mirrors.json").write_text(json.dumps(result, indent=1) + "\n")
    print(text)
    if result["failed"] or result["behind_seen"] != result["behind_truth"]:
        sys.exit("the checks disagree with the truth")


if __name__ == "__main__":
    main()
