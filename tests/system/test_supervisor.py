"""One supervisor: every changing set of targets (mirrors discovered from the primary, a farm's nodes, their JMX
pages, git mirrors under git_mirrors_dir) starts the new, stops the gone and keeps the rest; and a stop leaves no task
of the exporter's running, the webhook statistics' loop included."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from exporter.simulator import Scenario, SimulatedFarm
from tests.conftest import Samples, running_farm, value, wait_until
from tests.git_server import Remote, mirror_of

PACKAGE = Path(__file__).resolve().parents[2] / "exporter"


def exporter_tasks() -> list[str]:
    """Tasks of the event loop running the exporter's own code (the simulator's left out: it runs on)."""
    found = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        filename = Path(code.co_filename) if code is not None else None
        if filename is not None and filename.is_relative_to(PACKAGE) and "simulator" not in filename.parts:
            found.append(f"{task.get_name()}: {code.co_qualname if code is not None else '?'}")
    return found


def labelled(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for metric, labels in samples if metric == name}


async def test_each_set_of_targets_follows_its_source_and_a_stop_leaves_no_task(tmp_path: Path) -> None:
    remotes, mirrors = tmp_path / "remotes", tmp_path / "mirrors"
    remotes.mkdir()
    for name in ("one", "two"):
        mirror_of(Remote(remotes, name), mirrors / f"{name}.git")
    secret_file = tmp_path / "secret"
    secret_file.write_text("s3cret-for-webhooks")

    def prepare(farm: SimulatedFarm, config: dict[str, Any]) -> None:
        sydney = config["mirrors"][0]
        config["mirrors"] = [sydney]  # frankfurt only through discovery
        config["discover_mirrors"] = True
        sydney["jmx"] = {"exporter_url_template": farm.node_url_template("/jmx/bitbucket"), "interval_seconds": 1}
        config["git_mirrors_dir"] = {"glob": f"{mirrors}/*", "interval_seconds": 0.2}
        config["webhooks"] = {
            "secret_file": str(secret_file),
            "statistics_projects": ["PRJ1"],
            "statistics_interval_seconds": 1,
        }

    async with running_farm(Scenario(repositories=3), ["9.x", "8.x"], nodes=True, prepare=prepare) as run:
        exporter = run.exporter

        async def seen(name: str, label: str, wanted: set[str]) -> None:
            async def holds() -> bool:
                return labelled(await run.metrics(), name, label) == wanted

            await wait_until(holds, 15.0, f"{name} {label}s {sorted(wanted)}")

        sydney_nodes = {f"sydney-node-{i}" for i in (1, 2)}
        await seen("bitbucket_mirror_up", "mirror", {"sydney", "frankfurt"})
        await seen("bitbucket_mirror_node_up", "node", sydney_nodes)
        await seen("bitbucket_mirror_jmx_up", "node", sydney_nodes)
        await seen("bitbucket_mirror_git_refs_behind", "git_mirror", {"one", "two"})
        statistics = {"target": "primary", "source": "webhook_statistics"}
        await run.metrics_until(
            lambda s: value(s, "bitbucket_mirror_exporter_poll_success", **statistics) is not None, "statistics read"
        )
        running = exporter.polling.supervisor.running

        # Each set changes: a node joins, the primary stops listing frankfurt, a git mirror goes and one comes.
        await run.control("/sim/mirrors/sydney", {"nodes": 3})
        await run.control("/sim/mirrors/frankfurt", {"registered": False})
        shutil.rmtree(mirrors / "two.git")
        mirror_of(Remote(remotes, "three"), mirrors / "three.git")
        assert exporter.polling.git_mirrors is not None
        await exporter.polling.git_mirrors.follow()  # the directory is scanned once a minute: step one scan

        grown = {*sydney_nodes, "sydney-node-3"}
        await seen("bitbucket_mirror_up", "mirror", {"sydney"})
        await seen("bitbucket_mirror_node_up", "node", grown)
        await seen("bitbucket_mirror_jmx_up", "node", grown)
        await seen("bitbucket_mirror_git_refs_behind", "git_mirror", {"one", "three"})
        # Started: a node's REST loop and its JMX loop; stopped: frankfurt's loop. Git mirrors: one for one.
        assert exporter.polling.supervisor.running == running + 2 - 1

        # And back: the node leaves, frankfurt is listed again.
        await run.control("/sim/mirrors/sydney", {"nodes": 2})
        await run.control("/sim/mirrors/frankfurt", {"registered": True})
        await seen("bitbucket_mirror_node_up", "node", sydney_nodes)
        await seen("bitbucket_mirror_jmx_up", "node", sydney_nodes)
        await seen("bitbucket_mirror_up", "mirror", {"sydney", "frankfurt"})
        assert exporter.polling.supervisor.running == running

        assert exporter_tasks(), "the check finds the exporter's tasks while it runs"
        await exporter.stop()
        assert exporter.polling.supervisor.running == 0
        assert exporter_tasks() == []
        await exporter.start()  # running_farm stops it again on the way out
