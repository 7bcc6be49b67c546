"""Git reference mirrors against real git: real bare repositories, Git's own http-backend behind Basic auth on
127.0.0.1 and file:// remotes; a syncer that stalls, a push, a force-push, a deleted branch, a new tag, a pull-request
ref that must not count, an unreachable remote, a corrupt repository and a wrong password. Every number is checked
against what real git says of the two repositories."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from exporter.simulator import Scenario, SimulatedFarm
from tests.conftest import Samples, running_farm, value, wait_until
from tests.git_server import Remote, git, http_backend, mirror_of, sync

USER, PASSWORD = "ci-reader", "git-Pa55-w0rd"


def metric(samples: Samples, name: str, mirror: str = "app", **labels: str) -> float | None:
    return value(samples, name, git_mirror=mirror, **labels)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.is_file()}


def git_processes_argv() -> list[str]:
    """The command lines of every git process now (what `ps` would show)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            program = Path(argv[0]).name
            if program == "git" or program.startswith("git-"):  # git, and its helpers (git-remote-http)
                found.append(" ".join(argv))
    return found


async def test_a_reference_mirror_is_compared_ref_by_ref_with_its_remote(tmp_path: Path) -> None:
    root = tmp_path / "remotes"
    root.mkdir()
    remote = Remote(root)
    remote.commit("feature work", branch="feature")
    remote.push("feature")
    git("tag", "v1", cwd=remote.work)
    remote.push("v1")
    # A pull-request ref, as Bitbucket keeps them: never counted.
    git("update-ref", "refs/pull-requests/1/from", remote.refs()["refs/heads/feature"], cwd=remote.bare)
    mirror = mirror_of(remote, tmp_path / "mirrors" / "app.git")
    password_file = tmp_path / "git-password"
    password_file.write_text(PASSWORD)
    (tmp_path / "not-a-repo").mkdir()
    argv: list[str] = []
    started = time.time()

    async with http_backend(root, USER, PASSWORD) as base:
        url = f"{base}/app.git"

        def prepare(farm: SimulatedFarm, config: dict[str, Any]) -> None:
            common = {"interval_seconds": 0.2, "timeout_seconds": 10}
            config["git_mirrors"] = [
                {"name": "app", "path": str(mirror), "remote": url, "username": USER,
                 "password_file": str(password_file), **common},
                {"name": "app-file", "path": str(mirror), "remote": f"file://{remote.bare}", **common},
                {"name": "wrong-password", "path": str(mirror), "remote": url, "username": USER, "password": "nope",
                 **common},
                {"name": "unreachable", "path": str(mirror), "remote": "http://127.0.0.1:9/app.git", **common},
                {"name": "corrupt", "path": str(tmp_path / "not-a-repo"), "remote": url, **common},
            ]  # fmt: skip

        async with running_farm(Scenario(repositories=2, mirrors=1), ["9.x"], prepare=prepare) as run:

            def watched(check: Any) -> Any:
                """``check``, sampling the git processes' command lines at every scrape."""

                def sampled(samples: Samples) -> bool:
                    argv.extend(git_processes_argv())
                    return bool(check(samples))

                return sampled

            async def until(check: Any, what: str) -> Samples:
                return await run.metrics_until(watched(check), what)

            # In step: heads and tags counted on both sides, the pull-request ref not.
            counted = len([r for r in remote.refs() if not r.startswith("refs/pull-requests/")])
            samples = await until(lambda s: metric(s, "bitbucket_mirror_git_refs", side="remote") == counted, "in step")
            assert metric(samples, "bitbucket_mirror_git_refs", side="local") == counted == 3
            assert metric(samples, "bitbucket_mirror_git_refs_behind") == 0.0
            assert metric(samples, "bitbucket_mirror_git_behind_seconds") == 0.0
            # The size as git itself counts it (KiB of loose objects, packs and garbage).
            counts = dict(line.split(": ") for line in git("count-objects", "-v", cwd=mirror).splitlines())
            on_disk = sum(int(counts[k]) for k in ("size", "size-pack", "size-garbage")) * 1024
            assert metric(samples, "bitbucket_mirror_git_objects_bytes") == on_disk > 0
            checked = metric(samples, "bitbucket_mirror_git_last_check_success_timestamp_seconds")
            assert checked is not None and started <= checked <= time.time()
            assert metric(samples, "bitbucket_mirror_git_refs_behind", mirror="app-file") == 0.0

            # The remote moves ahead; the syncer stalls: one ref behind, for longer and longer.
            remote.commit("second")
            remote.push("main")
            samples = await until(lambda s: metric(s, "bitbucket_mirror_git_refs_behind") == 1.0, "a push behind")
            await until(lambda s: (metric(s, "bitbucket_mirror_git_behind_seconds") or 0) > 0.3, "behind for a while")
            # A new pull-request ref changes nothing.
            git("update-ref", "refs/pull-requests/2/from", remote.refs()["refs/heads/main"], cwd=remote.bare)
            # The syncer fetches: in step again, and its fetch is seen.
            sync(mirror)
            fetched = (mirror / "FETCH_HEAD").stat().st_mtime
            samples = await until(lambda s: metric(s, "bitbucket_mirror_git_refs_behind") == 0.0, "synced")
            assert metric(samples, "bitbucket_mirror_git_last_fetch_timestamp_seconds") == fetched
            assert metric(samples, "bitbucket_mirror_git_behind_seconds") == 0.0

            # A force-push, a deleted branch and a new tag on the remote.
            git("checkout", "-q", "feature", cwd=remote.work)
            git("reset", "-q", "--hard", "HEAD~1", cwd=remote.work)
            remote.commit("rewritten", branch="feature")
            remote.push("--force", "feature")
            git("push", "-q", "origin", "--delete", "feature", cwd=remote.work)
            remote.commit("on a new branch", branch="topic")
            remote.push("topic")
            git("tag", "v2", cwd=remote.work)
            remote.push("v2")
            samples = await until(
                lambda s: (
                    metric(s, "bitbucket_mirror_git_refs_behind") == 2.0
                    and metric(s, "bitbucket_mirror_git_refs_extra") == 1.0
                ),
                "topic and v2 missing, feature extra",
            )
            sync(mirror)
            await until(
                lambda s: (
                    metric(s, "bitbucket_mirror_git_refs_behind") == 0.0
                    and metric(s, "bitbucket_mirror_git_refs_extra") == 0.0
                ),
                "in step after fetch --prune",
            )

            # What cannot be compared says why.
            errors = "bitbucket_mirror_exporter_poll_errors_total"

            def failed(s: Samples, target: str, reason: str) -> bool:
                return (value(s, errors, target=target, source="git_refs", reason=reason) or 0) >= 1

            samples = await until(
                lambda s: failed(s, "wrong-password", "git_auth") and failed(s, "unreachable", "git_failed")
                and failed(s, "corrupt", "not_a_repository"),
                "the failing git mirrors counted by reason",
            )  # fmt: skip
            assert metric(samples, "bitbucket_mirror_git_refs_behind", mirror="wrong-password") is None

            # The password never on a git command line, in the metrics or on the landing page.
            text = (await run.get("/metrics"))[1] + (await run.get("/"))[1]
            assert PASSWORD not in text

            async def seen_a_git_process() -> bool:  # the checks run every 0.2 s: catch some in flight
                argv.extend(git_processes_argv())
                return bool(argv)

            await wait_until(seen_a_git_process, 10, "a git process of the exporter's")
            assert not [line for line in argv if PASSWORD in line]


async def test_a_directory_of_mirrors_is_found_and_each_uses_its_own_origin(tmp_path: Path) -> None:
    root = tmp_path / "remotes"
    root.mkdir()
    mirrors = tmp_path / "mirrors"
    for name in ("one", "two"):
        mirror_of(Remote(root, name), mirrors / f"{name}.git")
    (mirrors / "not-a-repository").mkdir()
    before = snapshot(mirrors)

    def prepare(farm: SimulatedFarm, config: dict[str, Any]) -> None:
        config["git_mirrors_dir"] = {"glob": f"{mirrors}/*", "interval_seconds": 0.2}

    async with running_farm(Scenario(repositories=2, mirrors=1), ["9.x"], prepare=prepare) as run:
        samples = await run.metrics_until(
            lambda s: (
                metric(s, "bitbucket_mirror_git_refs_behind", mirror="one") == 0.0
                and metric(s, "bitbucket_mirror_git_refs_behind", mirror="two") == 0.0
            ),
            "both found, in step with their origins",
        )
        names = {dict(labels).get("git_mirror") for name, labels in samples if name == "bitbucket_mirror_git_refs"}
        assert names == {"one", "two"}
    # Read-only: not a file of the mirrors was created, changed or removed (no lock, no fetch, no gc).
    assert snapshot(mirrors) == before


async def test_verify_refs_names_the_branch_and_both_commits_where_a_mirror_differs() -> None:
    def prepare(farm: SimulatedFarm, config: dict[str, Any]) -> None:
        config["mirrors"][0]["verify_refs"] = ["PRJ1/repo-1", "PRJ2/repo-2"]
        # The primary by Basic auth (askpass), the mirror by token (a Bearer header from git's environment).
        config["mirrors"][0]["token"] = farm.scenario.token

    async with running_farm(Scenario(repositories=4, mirrors=1), ["9.x"], interval=0.3, prepare=prepare) as run:
        behind = "bitbucket_mirror_repository_refs_behind"

        def repo_behind(s: Samples, project: str, slug: str) -> float | None:
            return value(s, behind, mirror="sydney", project=project, repository=slug)

        # In step: the primary's pull-request ref does not count (mirrors sync those only periodically).
        await run.metrics_until(lambda s: repo_behind(s, "PRJ1", "repo-1") == 0.0, "verified in step")
        await run.control("/sim/mirrors/sydney", {"frozen": True})
        await run.control("/sim/push", {"repository_ids": [1]})
        samples = await run.metrics_until(lambda s: repo_behind(s, "PRJ1", "repo-1") == 1.0, "repo-1 main behind")
        assert repo_behind(samples, "PRJ2", "repo-2") == 0.0
        repo = run.farm.farm.repositories[1]
        status, body = await run.get("/api/v1/refs")
        found = {(r["project"], r["repository"]): r for r in json.loads(body)["repositories"]}
        assert status == 200 and found[("PRJ2", "repo-2")]["behind"] == []
        assert found[("PRJ1", "repo-1")]["behind"] == [
            {"ref": "refs/heads/main", "mirror": repo.commit(1), "primary": repo.commit(2)}
        ]

        # Neither secret on a git command line, in the metrics, the landing page or the JSON.
        secrets = (run.farm.scenario.password, run.farm.scenario.token)
        argv: list[str] = []

        async def seen_a_git_process() -> bool:  # verify_refs runs every 0.3 s: catch some in flight
            argv.extend(git_processes_argv())
            return bool(argv)

        await wait_until(seen_a_git_process, 10, "a git ls-remote of the exporter's")
        text = (await run.get("/metrics"))[1] + (await run.get("/"))[1] + body
        assert not [s for s in secrets if s in text or any(s in line for line in argv)]


async def test_twenty_reloads_leave_no_askpass_directory_and_no_descriptor_behind(tmp_path: Path) -> None:
    import os
    import tempfile

    from exporter.app import Settings
    from exporter.web.config import WebConfig

    remote = Remote(tmp_path)
    mirror = mirror_of(remote, tmp_path / "mirror.git")

    def helpers() -> set[str]:
        return {p.name for p in Path(tempfile.gettempdir()).glob(f"bme-git-{os.getpid()}-*")}  # this process's

    def descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    async with http_backend(tmp_path, USER, PASSWORD) as base:
        current: dict[str, Any] = {}

        def loader() -> tuple[Settings, WebConfig]:
            return current["settings"], WebConfig()

        def prepare(farm: SimulatedFarm, config: dict[str, Any]) -> None:
            config["git_mirrors"] = [
                {"name": "app", "path": str(mirror), "remote": f"{base}/app.git", "username": USER,
                 "password": PASSWORD, "interval_seconds": 0.2, "timeout_seconds": 10},
            ]  # fmt: skip

        async with running_farm(Scenario(repositories=2, mirrors=1), ["9.x"], prepare=prepare, loader=loader) as run:
            current["settings"] = run.exporter.settings

            async def checked() -> bool:
                return metric(await run.metrics(), "bitbucket_mirror_git_refs_behind") == 0.0

            await wait_until(checked, 20, "the mirror checked over HTTP (the askpass helper in use)")
            before_helpers, before_fds = helpers(), descriptors()
            seen = helpers()
            for _ in range(20):
                assert await run.exporter.reload() == (True, "config reloaded")

                async def new_helper(known: set[str] = seen) -> bool:
                    return bool(helpers() - known)  # the new configuration's git asked for credentials

                await wait_until(new_helper, 20, "the mirror checked again after the reload")
                seen |= helpers()
            assert len(helpers() - before_helpers) <= 1  # the running configuration's own, at most
            assert descriptors() <= before_fds + 5  # sockets come and go; twenty reloads' worth would not fit
        assert not helpers() - before_helpers  # and none once the exporter has stopped
