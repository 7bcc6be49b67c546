"""bench/scale.py's results: the machine, the scale targets (bench/README.md), a markdown table, a JSON file and a PNG
plot."""

from __future__ import annotations

import json
import math
import os
import platform
from importlib.metadata import version
from pathlib import Path
from typing import Any

MB = 1_000_000
RSS_LIMIT_MB = 300
P99_LIMIT_MS = 50
# Issue 23, node by node.
NODE_CYCLE_LIMIT = 2.0
# A quiet farm (no pushes between cycles) costs little more than downloading it: wall and CPU against the floor's.
QUIET_CYCLE_LIMIT = 1.3
LOOP_STALL_LIMIT_MS = 20
NODE_P99_LIMIT_MS = 10
NODE_MAX_LIMIT_MS = 25
NODE_RSS_LIMIT_MB = 350


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
    """The largest row of the standard sizes: a 1M row merged in checks the model, it is not what the targets ask."""
    standard = [r for r in rows if r["repositories"] <= MODEL_TO] or rows
    return max(standard, key=lambda r: (r["repositories"], r["mirrors"]))


def _nodes(row: dict[str, Any]) -> int:
    return int(row.get("nodes", 1))


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The scale targets, judged at the largest size measured through the farm URL (100k repositories and 3 mirrors in
    the full run); and, where a row reads node by node, the same bounds for it (each node's listing is its own walk)."""
    farm_url = [r for r in rows if _nodes(r) == 1]
    found = _farm_url_targets(farm_url) if farm_url else []
    by_node = [r for r in rows if _nodes(r) > 1]
    if by_node:
        found += _node_targets(max(by_node, key=lambda r: (r["repositories"], r["mirrors"], _nodes(r))), rows)
    return found


def _node_targets(big: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 23's targets, at the largest row read node by node (100k x 3 mirrors x 3 nodes in the full run)."""
    exporter, floor = big["exporter"], big["floor"]
    what = f"{big['repositories']:,} x {big['mirrors']} mirrors x {_nodes(big)} nodes"
    found = []

    def judge(name: str, value: str, met: bool) -> None:
        found.append({"target": f"{what}: {name}", "measured": value, "met": met})

    changes = float(big.get("changes_per_cycle", 0.0))
    limit = QUIET_CYCLE_LIMIT if changes == 0 else NODE_CYCLE_LIMIT
    quiet = f"{changes:g} of the repositories pushed between cycles"
    ratio = exporter["wall_seconds"] / floor["wall_seconds"]
    judge(f"cycle at most {limit}x its floor ({quiet})", f"{ratio:.2f}x", ratio <= limit)
    cpu = exporter["cpu_seconds"] / floor["cpu_seconds"]
    workers = exporter.get("worker_cpu_seconds")
    parts = (
        f" ({exporter.get('exporter_process_cpu_seconds', 0):.2f} s loop + {workers:.2f} s workers)" if workers else ""
    )
    judge(f"CPU per cycle at most {limit}x the floor's", f"{cpu:.2f}x{parts}", cpu <= limit)
    for label, run in (("", exporter), (" over TLS with basic auth", big.get("exporter_tls"))):
        if run is None:
            continue
        for key, bound in (("p99", NODE_P99_LIMIT_MS), ("max", NODE_MAX_LIMIT_MS)):
            value = run["scrapes"][key]
            judge(
                f"/metrics {key}{label} at most {bound} ms while cycles run",
                f"{value * 1000:.1f} ms" if value is not None else "no scrape",
                value is not None and value * 1000 <= bound,
            )
    if exporter.get("peak_pss_bytes"):
        pss = exporter["peak_pss_bytes"] / MB
        judge(
            f"peak memory of the exporter and its workers (sum of PSS) at most {NODE_RSS_LIMIT_MB} MB",
            f"{pss:.0f} MB",
            pss <= NODE_RSS_LIMIT_MB,
        )
    else:
        rss = exporter["peak_rss_bytes"] / MB
        judge(f"peak RSS at most {NODE_RSS_LIMIT_MB} MB", f"{rss:.0f} MB", rss <= NODE_RSS_LIMIT_MB)
    stall = exporter.get("loop_stall_max_ms")
    if stall is not None:
        busy = exporter.get("loop_busy_max_ms")
        own = f"; the loop's own work within one at most {busy:.1f} ms" if busy is not None else ""
        judge(
            f"longest event-loop stall at most {LOOP_STALL_LIMIT_MS} ms while cycles run",
            f"{stall:.1f} ms (p99 {exporter['loop_stall_p99_ms']:.1f} ms{own})",
            stall <= LOOP_STALL_LIMIT_MS,
        )
    pages = primary_pages(big)
    asked = exporter["requests"]["primary"] - exporter.get("push_lookups", 0)
    judge(
        "requests to the primary = its page count (push lookups apart)",
        f"{asked:,} of {pages:,} pages (+ {exporter.get('push_lookups', 0)} push lookups)",
        asked == pages,
    )
    found_in = big.get("drift_found")
    if found_in is not None:
        judge(
            "a push never synced is on /metrics within one interval plus one cycle",
            f"{found_in['max_seconds']:.1f} s (bound {found_in['bound_seconds']:.1f} s)",
            found_in["max_seconds"] <= found_in["bound_seconds"],
        )
    return found


def primary_pages(row: dict[str, Any]) -> int:
    """Pages of the primary's two listings a cycle reads: repos and mirrorServers."""
    cap = int(row.get("page_cap", 100))
    return math.ceil(int(row["repositories"]) / cap) + math.ceil(max(int(row["mirrors"]), 1) / cap)


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
    series = {
        r["repositories"]: r["exporter"]["series"] for r in rows if r["mirrors"] == big["mirrors"] and _nodes(r) == 1
    }
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


def _drift_found(result: dict[str, Any] | None) -> str:
    if result is None:
        return "-"
    return f"{result['max_seconds']:.1f} ({result['bound_seconds']:.1f})"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| repos | mirrors | nodes | exporter cycle s (CPU s) | floor s | vs floor | sync script s "
        "| exporter faster by | per-repo calls s | requests primary / each mirror (each node) | MB per cycle "
        "| peak RSS MB | series (per-repo) | /metrics p50 / p99 / max ms (scrapes) "
        "| simulator CPU s per floor / exporter cycle | push lookups cold / steady cycles "
        "| drift on /metrics after a push, max s (bound) |",
        "|" + "---:|" * 17,
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
            f"| {_lookups(exporter)} | {_drift_found(row.get('drift_found'))} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Cycle time with its floor, peak RSS and /metrics p99 against repositories, a line per mirrors x nodes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (times, memory, latency) = plt.subplots(1, 3, figsize=(16, 4.8))
    shapes = sorted({(r["mirrors"], _nodes(r)) for r in rows})
    for i, (mirrors, nodes) in enumerate(shapes):
        chosen = sorted(
            (r for r in rows if (r["mirrors"], _nodes(r)) == (mirrors, nodes)), key=lambda r: r["repositories"]
        )
        sizes = [r["repositories"] for r in chosen]
        label = f"{mirrors}m x {nodes}n"
        style = "-" if nodes > 1 else ":"
        colour = f"C{i}"
        times.plot(sizes, [r["exporter"]["wall_seconds"] for r in chosen], style, color=colour, marker="o",
                   label=f"exporter, {label}")  # fmt: skip
        times.plot(sizes, [r["floor"]["wall_seconds"] for r in chosen], style, color=colour, marker="x", alpha=0.5,
                   label=f"floor, {label}")  # fmt: skip
        synced = [r for r in chosen if "sync" in r]
        if synced:
            times.plot([r["repositories"] for r in synced], [r["sync"]["wall_seconds"] for r in synced], "--",
                       color=colour, marker=".", alpha=0.4, label=f"sync script, {label}")  # fmt: skip
        memory.plot(sizes, [r["exporter"]["peak_rss_bytes"] / MB for r in chosen], style, color=colour, marker="o",
                    label=label)  # fmt: skip
        p99 = [(r["repositories"], r["exporter"]["scrapes"]["p99"]) for r in chosen if r["exporter"]["scrapes"]["p99"]]
        latency.plot([n for n, _ in p99], [v * 1000 for _, v in p99], style, color=colour, marker="o", label=label)
    times.set(xscale="log", yscale="log", xlabel="repositories", ylabel="seconds per poll cycle",
              title="Cycle time (x: its floor)")  # fmt: skip
    times.legend(fontsize=6)
    memory.axhline(NODE_RSS_LIMIT_MB, color="red", linestyle="--", label="target (nodes)")
    memory.set(xscale="log", xlabel="repositories", ylabel="MB", title="Exporter peak RSS")
    memory.legend(fontsize=7)
    latency.axhline(NODE_P99_LIMIT_MS, color="red", linestyle="--", label="target (nodes)")
    latency.set(xscale="log", yscale="log", xlabel="repositories", ylabel="ms", title="/metrics p99 during cycles")
    latency.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# Where the model is asked: Bitbucket's largest farms, and one shard of them (one exporter per mirror farm).
PREDICTED = ((1_000_000, 5, 3), (1_000_000, 1, 3), (1_000_000, 1, 1))
MODEL_FROM = 10_000  # rows below this size are dominated by fixed costs, not by the repository count
MODEL_TO = 100_000  # larger rows (1M x 1 x 1) check the model rather than feed it


def model(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """CPU seconds per cycle and peak RSS, fitted by least relative squares as ``a + b * repositories + c * listing
    rows`` (listing rows = repositories x mirrors x nodes: what the mirror side reads) to the rows of at least 10k
    repositories; None with fewer than four such rows."""
    import numpy as np

    fitted = [r for r in rows if MODEL_FROM <= r["repositories"] <= MODEL_TO]
    if len(fitted) < 4:
        return None
    design = np.array([[1.0, r["repositories"], r["repositories"] * r["mirrors"] * _nodes(r)] for r in fitted])
    figures = {
        "cpu_seconds": [r["exporter"]["cpu_seconds"] for r in fitted],
        "peak_rss_mb": [_peak_memory(r["exporter"]) / MB for r in fitted],
    }
    # The exporter's own process (the event loop: one core at most) apart from its workers, where measured.
    if all("exporter_process_cpu_seconds" in r["exporter"] for r in fitted):
        figures["loop_cpu_seconds"] = [r["exporter"]["exporter_process_cpu_seconds"] for r in fitted]
    result: dict[str, Any] = {"fitted_rows": len(fitted), "terms": ["1", "repositories", "listing rows"]}
    for name, observed in figures.items():
        # Weighted by 1/observed: relative errors count, so the 10k rows are not lost beside the 100k ones.
        weights = 1.0 / np.array(observed)
        coefficients = np.linalg.lstsq(design * weights[:, None], np.ones(len(observed)), rcond=None)[0]
        worst = max(abs(float(p) - o) / o for p, o in zip(design @ coefficients, observed, strict=True))
        result[name] = {"coefficients": [float(c) for c in coefficients], "worst_fit_error": worst}
    result["predicted"] = [
        {
            "repositories": n,
            "mirrors": m,
            "nodes": k,
            **{name: float(np.dot(result[name]["coefficients"], [1.0, n, n * m * k])) for name in figures},
        }
        for n, m, k in PREDICTED
    ]
    result["checked"] = [
        {
            "repositories": r["repositories"],
            "mirrors": r["mirrors"],
            "nodes": _nodes(r),
            "cpu_seconds": r["exporter"]["cpu_seconds"],
            "peak_rss_mb": _peak_memory(r["exporter"]) / MB,
            **{
                f"predicted_{name}": float(
                    np.dot(
                        result[name]["coefficients"],
                        [1.0, r["repositories"], r["repositories"] * r["mirrors"] * _nodes(r)],
                    )
                )
                for name in ("cpu_seconds", "peak_rss_mb")
            },
        }
        for r in rows
        if r["repositories"] > MODEL_TO
    ]
    return result


def _peak_memory(exporter: dict[str, Any]) -> float:
    """The exporter's and its workers' summed PSS where measured, else the exporter's own peak RSS."""
    return float(exporter.get("peak_pss_bytes") or exporter["peak_rss_bytes"])


def _loop_share(predicted: dict[str, Any]) -> str:
    loop = predicted.get("loop_cpu_seconds")
    return f"{loop:.1f}" if loop is not None else "-"


def _cores(predicted: dict[str, Any], interval: float = 30.0) -> str:
    loop = predicted.get("loop_cpu_seconds")
    if loop is None:
        return f"{predicted['cpu_seconds'] / interval:.1f}"
    workers = max(0.0, predicted["cpu_seconds"] - loop)
    return f"{loop / interval:.1f} loop + {workers / interval:.1f} workers"


def model_text(fit: dict[str, Any] | None) -> list[str]:
    if fit is None:
        return []
    cpu, rss = fit["cpu_seconds"], fit["peak_rss_mb"]
    lines = [
        "## Model",
        "",
        f"Fitted to the {fit['fitted_rows']} rows of {MODEL_FROM:,} to {MODEL_TO:,} repositories: per cycle, CPU "
        f"seconds = {cpu['coefficients'][0]:.3f} + {cpu['coefficients'][1] * 1e6:.3f} per million repositories + "
        f"{cpu['coefficients'][2] * 1e6:.3f} per million listing rows (repositories x mirrors x nodes), worst fit "
        f"error {cpu['worst_fit_error']:.0%}; peak memory MB (the exporter's and its workers' summed PSS) = "
        f"{rss['coefficients'][0]:.0f} + "
        f"{rss['coefficients'][1] * 1e6:.0f} per million repositories + {rss['coefficients'][2] * 1e6:.0f} per "
        f"million listing rows, worst fit error {rss['worst_fit_error']:.0%}.",
        "",
        "| repositories | mirrors | nodes | predicted CPU s per cycle | of which the event loop | cores at a 30 s "
        "interval | predicted peak memory MB |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {p['repositories']:,} | {p['mirrors']} | {p['nodes']} | {p['cpu_seconds']:.1f} | "
            f"{_loop_share(p)} | {_cores(p)} | {p['peak_rss_mb']:.0f} |"
            for p in fit["predicted"]
        ),
        "",
        "Cores: the event loop is one thread (it can use one core at most: above 30 s of loop CPU a cycle outlasts a "
        "30 s interval whatever the workers); the workers' share spreads over `--workers.processes`.",
        "",
        *(
            f"Checked at {c['repositories']:,} x {c['mirrors']} x {c['nodes']}: measured {c['cpu_seconds']:.1f} s CPU "
            f"and {c['peak_rss_mb']:.0f} MB against {c['predicted_cpu_seconds']:.1f} s and "
            f"{c['predicted_peak_rss_mb']:.0f} MB predicted."
            for c in fit["checked"]
        ),
        "",
    ]
    return lines


def write_results(out: Path, rows: list[dict[str, Any]], host: dict[str, Any], settings: dict[str, Any]) -> str:
    out.mkdir(parents=True, exist_ok=True)
    found = targets(rows)
    fit = model(rows)
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
            "![cycle time, RSS and /metrics p99 against repository count](scale.png)",
            "",
            *model_text(fit),
        ]
    )
    (out / "scale.md").write_text(report)
    (out / "scale.json").write_text(
        json.dumps({"machine": host, "settings": settings, "rows": rows, "targets": found, "model": fit}, indent=1)
        + "\n"
    )
    plot(rows, out / "scale.png")
    return report
