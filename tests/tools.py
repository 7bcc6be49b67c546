"""What tests share to run real programs and check real output: the one lookup of a program a test runs, and the two
checks of an exposition (promtool's lint and docs/metrics.md's coverage)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

METRICS_DOC = Path(__file__).parent.parent / "docs" / "metrics.md"


def binary(name: str, package: str, skip_outside_ci: bool = False) -> str:
    """The program's path; else the test fails naming the Debian package that brings it (scripts/bootstrap installs
    every one). ``skip_outside_ci``: a program a distribution may lack as a deb (Ubuntu's chromium is a snap) skips
    the test on a workstation, never in CI."""
    # Daemons' programs (haproxy) are in sbin, on root's PATH but not always a user's.
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        message = f"{name} not found: install the Debian package {package!r} (scripts/bootstrap does)"
        if skip_outside_ci and not os.environ.get("CI"):
            pytest.skip(message)
        pytest.fail(message)
    return path


def exported_names(text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(text):
        if family.name.startswith("bitbucket_mirror"):
            names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


def undocumented(text: str) -> set[str]:
    """Exported bitbucket_mirror metrics that docs/metrics.md does not name in backticks."""
    doc = METRICS_DOC.read_text()
    return {name for name in exported_names(text) if f"`{name}`" not in doc}


def lint(text: str) -> subprocess.CompletedProcess[str]:
    """``promtool check metrics`` on an exposition."""
    command = [binary("promtool", "prometheus"), "check", "metrics"]
    return subprocess.run(command, input=text, capture_output=True, text=True, timeout=30)
