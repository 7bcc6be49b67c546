"""bench/scale.py's results: the machine, the targets of issue 8, a markdown table, a JSON file and a PNG plot."""

from __future__ import annotations

import json
import os
import platform
from importlib.metadata import version
from pathlib import Path
from typing import Any

MB = 1_000_000
RSS_LIMIT_MB = 300
P99_LIMIT_MS = 50


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    memory_kb = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if "MemTotal" in line
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 1024 / 1024, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": {
            name: version(name) for name in ("aiohttp", "msgspec", "pydantic", "prometheus-client", "requests")
        },
    }


def _largest(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return max(rows, key=lambda r: (r["repositories"], r["mirrors"]))


def _nodes(row: dict[str, Any]) -> int:
    return int(row.get("nodes", 1))


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 8's targets, judged at the largest size measured through the farm URL (100k repositories and 3 mirrors
    in the full run); and, where a row reads node by node, the same bounds for it (issue 19)."""
    farm_url = [r for r in rows if _nodes(r) == 1]
    found = _farm_url_targets(farm_url) if farm_url else []
    by_node = [r for r in rows if _nodes(r) > 1]
    if by_node:
        found += _node_targets(max(by_node, key=lambda r: (r["repositories"], r["mirrors"], _nodes(r))), rows)
    return found


def _node_targets(big: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    exporter, floor = big["exporter"], big["floor"]
    what = f"{big['repositories']:,} x {big['mirrors']} mirrors x {_nodes(big)} nodes"
    found = []
    ratio = exporter["wall_seconds"] / floor["wall_seconds"]
    found.append({"target": f"{what}: cycle at most 1.5x its floor", "measured": f"{ratio:.2f}x", "met": ratio <= 1.5})
    same = [r for r in rows if (r["repositories"], r["mirrors"]) == (big["repositories"], big["mirrors"])]
    primary = sorted({r["exporter"]["requests"]["primary"] for r in same})
    found.append(
        {
            "target": f"{what}: requests to the primary as without nodes",
            "measured": str(primary),
            "met": len(primary) == 1,
        }
    )
    rss = exporter["peak_rss_bytes"] / MB
    found.append(
        {"target": f"{what}: peak RSS under {RSS_LIMIT_MB} MB", "measured": f"{rss:.0f} MB", "met": rss < RSS_LIMIT_MB}
    )
    p99 = exporter["scrapes"]["p99"]
    found.append(
        {
            "target": f"{what}: /metrics p99 under {P99_LIMIT_MS} ms during the cycle",
            "measured": f"{p99 * 1000:.1f} ms" if p99 is not None else "no scrape",
            "met": p99 is not None and p99 * 1000 < P99_LIMIT_MS,
        }
    )
    return found


def _farm_url_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    big = _largest(rows)
    exporter, floor, sync = big["exporter"], big["floor"], big["sync"]
    found = []

    def judge(name: str, value: str, met: bool) -> None:
        found.append({"target": name, "measured": value, "met": met})

    ratio = exporter["wall_seconds"] / floor["wall_seconds"]
    judge("cycle at most 1.5x the floor", f"{ratio:.2f}x", ratio <= 1.5)
    speedup = sync["wall_seconds"] / exporter["wall_seconds"]
    judge("at least 3x faster than the synchronous script", f"{speedup:.1f}x", speedup >= 3)
    by_size: dict[int, set[int]] = {}
    for row in rows:
        by_size.setdefault(row["repositories"], set()).add(row["exporter"]["requests"]["primary"])
    same = all(len(counts) == 1 for counts in by_size.values())
    shown = ", ".join(f"{n}: {sorted(c)}" for n, c in sorted(by_size.items()))
    judge("requests to the primary independent of the mirror count", shown, same)
    rss = exporter["peak_rss_bytes"] / MB
    judge(f"peak RSS under {RSS_LIMIT_MB} MB", f"{rss:.0f} MB", rss < RSS_LIMIT_MB)
    p99 = exporter["scrapes"]["p99"]
    judge(
        f"/metrics p99 under {P99_LIMIT_MS} ms during the cycle",
        f"{p99 * 1000:.1f} ms" if p99 is not None else "no scrape",
        p99 is not None and p99 * 1000 < P99_LIMIT_MS,
    )
    series = {r["repositories"]: r["exporter"]["series"] for r in rows if r["mirrors"] == big["mirrors"]}
    fixed = {r["repositories"]: r["exporter"]["series"] - r["exporter"]["repository_series"] for r in rows}
    judge(
        "series independent of the repository count (default settings)",
        f"{series} in all; without per-repository series {sorted(set(fixed.values()))}",
        len(set(series.values())) == 1,
    )
    return found


def _per_repository(result: dict[str, Any] | None) -> str:
    if result is None:
        return "-"
    return f"{result['wall_seconds']:.2f} ({sum(result['requests'].values()):,} calls)"


def _lookups(exporter: dict[str, Any]) -> str:
    """Ref change activity pages asked (lag dated from the push): in the cold cycle, then in each steady one."""
    if "cold_push_lookups" not in exporter:
        return "-"
    steady = ", ".join(str(n) for n in exporter.get("push_lookups_per_cycle", []))
    return f"{exporter['cold_push_lookups']} / {steady}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| repos | mirrors | nodes | exporter cycle s (CPU s) | floor s | vs floor | sync script s "
        "| exporter faster by | per-repo calls s | requests primary / each mirror (each node) | MB per cycle "
        "| peak RSS MB | series (per-repo) | /metrics p50 / p99 / max ms (scrapes) "
        "| simulator CPU s per floor / exporter cycle | push lookups cold / steady cycles |",
        "|" + "---:|" * 16,
    ]
    for row in rows:
        exporter, floor, sync = row["exporter"], row["floor"], row.get("sync")
        mirror_requests = sorted({v for k, v in exporter["requests"].items() if k != "primary" and "/" not in k})
        node_requests = sorted({v for k, v in exporter["requests"].items() if "/" in k})
        nodes_shown = f" ({', '.join(f'{r:,}' for r in node_requests)})" if node_requests else ""
        sync_seconds = f"{sync['wall_seconds']:.2f}" if sync else "-"
        faster = f"{sync['wall_seconds'] / exporter['wall_seconds']:.1f}x" if sync else "-"
        scrapes = exporter["scrapes"]
        latency = (
            " / ".join(f"{scrapes[k] * 1000:.1f}" for k in ("p50", "p99", "max")) + f" ({scrapes['count']})"
            if scrapes["count"]
            else "-"
        )
        lines.append(
            f"| {row['repositories']:,} | {row['mirrors']} | {_nodes(row)} "
            f"| {exporter['wall_seconds']:.2f} ({exporter['cpu_seconds']:.2f}) | {floor['wall_seconds']:.2f} "
            f"| {exporter['wall_seconds'] / floor['wall_seconds']:.2f}x | {sync_seconds} | {faster} "
            f"| {_per_repository(row.get('per_repository'))} "
            f"| {exporter['requests']['primary']:,} / {', '.join(f'{r:,}' for r in mirror_requests)}{nodes_shown} "
            f"| {sum(exporter['response_bytes'].values()) / MB:.1f} | {exporter['peak_rss_bytes'] / MB:.0f} "
            f"| {exporter['series']} ({exporter['repository_series']}) | {latency} "
            f"| {floor['simulator_cpu_seconds']:.2f} / {exporter['simulator_cpu_seconds']:.2f} "
            f"| {_lookups(exporter)} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (times, memory) = plt.subplots(1, 2, figsize=(12, 4.5))
    for mirrors in sorted({r["mirrors"] for r in rows}):
        chosen = sorted(
            (r for r in rows if r["mirrors"] == mirrors and _nodes(r) == 1), key=lambda r: r["repositories"]
        )
        sizes = [r["repositories"] for r in chosen]
        style = "-" if mirrors > 1 else ":"
        for key, label, colour in (
            ("exporter", "exporter", "C0"),
            ("floor", "floor", "C2"),
            ("sync", "sync script", "C1"),
        ):
            seconds = [r[key]["wall_seconds"] for r in chosen]
            times.plot(sizes, seconds, style, color=colour, marker="o", label=f"{label}, {mirrors}m")
        per_repo = [r for r in chosen if "per_repository" in r]
        if per_repo:
            times.plot(
                [r["repositories"] for r in per_repo],
                [r["per_repository"]["wall_seconds"] for r in per_repo],
                style,
                color="C3",
                marker="x",
                label=f"per-repo calls, {mirrors}m",
            )
        rss = [r["exporter"]["peak_rss_bytes"] / MB for r in chosen]
        memory.plot(sizes, rss, style, color="C0", marker="o", label=f"exporter, {mirrors}m")
        for row in (r for r in rows if r["mirrors"] == mirrors and _nodes(r) > 1):
            label = f"{mirrors}m x {_nodes(row)} nodes"
            times.plot(
                [row["repositories"]], [row["exporter"]["wall_seconds"]], "*", color="C0", label=f"exporter, {label}"
            )
            times.plot([row["repositories"]], [row["floor"]["wall_seconds"]], "*", color="C2", label=f"floor, {label}")
            memory.plot([row["repositories"]], [row["exporter"]["peak_rss_bytes"] / MB], "*", color="C0", label=label)
    times.set(xscale="log", yscale="log", xlabel="repositories", ylabel="seconds per poll cycle", title="Cycle time")
    times.legend(fontsize=7)
    memory.axhline(RSS_LIMIT_MB, color="red", linestyle="--", label="target")
    memory.set(xscale="log", xlabel="repositories", ylabel="MB", title="Exporter peak RSS")
    memory.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_results(out: Path, rows: list[dict[str, Any]], host: dict[str, Any], settings: dict[str, Any]) -> str:
    out.mkdir(parents=True, exist_ok=True)
    found = targets(rows)
    libraries = ", ".join(f"{k} {v}" for k, v in host["libraries"].items())
    report = "\n".join(
        [
            "# Scale benchmark results",
            "",
            f"Machine: {host['cpu']}, {host['cores']} cores, {host['memory_gib']} GiB; {host['os']}; "
            f"Python {host['python']}; {libraries}.",
            f"Settings: {json.dumps(settings)}. Written by `python3 bench/scale.py`; bench/README.md explains "
            "each column.",
            "",
            table(rows),
            "",
            "| target (largest size) | measured | met |",
            "|---|---|---|",
            *(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |" for t in found),
            "",
            "![cycle time and RSS against repository count](scale.png)",
            "",
        ]
    )
    (out / "scale.md").write_text(report)
    (out / "scale.json").write_text(
        json.dumps({"machine": host, "settings": settings, "rows": rows, "targets": found}, indent=1) + "\n"
    )
    plot(rows, out / "scale.png")
    return report
