"""The container image, as far as it can be checked without a Docker engine: the build stage's `pip wheel` on
exactly the files .dockerignore lets into the build context, and the Dockerfile's user, entry point and port
matching the chart."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).parent.parent.parent


def build_context(into: Path) -> list[str]:
    """Copies what .dockerignore admits (its `*` then `!path` form) into ``into``; returns the admitted paths."""
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [r for r in rules if r and not r.startswith("#")]
    assert rules[0] == "*", "the context starts from nothing and admits files one by one"
    admitted = [r[1:].rstrip("/") for r in rules if r.startswith("!")]
    excluded = [r.removeprefix("**/") for r in rules[1:] if not r.startswith("!")]
    for name in admitted:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, into / name, ignore=shutil.ignore_patterns(*excluded))
        else:
            shutil.copy(source, into / name)
    return admitted


def test_the_build_stage_builds_the_exporter_wheel_from_the_docker_context(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    build_context(context)
    assert not list(context.rglob("__pycache__"))
    wheels = tmp_path / "wheels"
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), "."]
    subprocess.run(command, cwd=context, check=True, timeout=300, capture_output=True)
    [wheel] = wheels.glob("bitbucket_mirror_exporter-*.whl")
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "bitbucket-mirror-exporter = exporter.cli:main" in whl.read(entry_points).decode()
    assert "exporter/cli.py" in names and "exporter/jmx/query.py" in names and "exporter/simulator/farm.py" in names
    # `bitbucket-mirror-exporter rules` and the /runbooks page work from the installed package alone.
    assert "alerts/rules.py" in names and "alerts/runbooks.md" in names


def test_the_dockerfile_runs_as_the_charts_non_root_user_on_the_charts_port() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    values = yaml.safe_load((ROOT / "helm/values.yaml").read_text())
    uid = values["podSecurityContext"]["runAsUser"]
    assert f"USER {uid}:{values['podSecurityContext']['runAsGroup']}" in dockerfile
    assert "EXPOSE 9879" in dockerfile and values["service"]["port"] == 9879
    assert 'ENTRYPOINT ["bitbucket-mirror-exporter"]' in dockerfile
    # A pinned base: a full patch version, never a floating tag.
    [base] = [line.split("=", 1)[1] for line in dockerfile.splitlines() if line.startswith("ARG PYTHON_IMAGE=")]
    assert fnmatch.fnmatch(base, "python:3.11.*-slim-*") and base.count(".") == 2
    assert "ARG WITH_JAVA=false" in dockerfile and "openjdk-17-jre-headless" in dockerfile
