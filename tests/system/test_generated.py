"""Every generated artefact is what its source renders today (scripts/generate --check), and the pieces that a
user reaches without a checkout work: the `rules` subcommand and the /runbooks page."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alerts.rules import AlertConfig, alert_names, render
from exporter.cli import main
from exporter.web.runbooks import anchor, page
from tests.conftest import running_farm

REPO = Path(__file__).resolve().parent.parent.parent


def test_nothing_generated_is_stale() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "generate"), "--check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _rules_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BITBUCKET_MIRROR_EXPORTER_")}
    return subprocess.run(
        [sys.executable, "-m", "exporter", "rules", *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_the_rules_command_renders_overrides_and_refuses_bad_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The installed entry point once, as a user runs it; the bad values through the same main() in this process.
    result = _rules_cli("--set", "lag_for=10m", "--set", "lag_critical_seconds=7200")
    assert result.returncode == 0, result.stderr
    assert result.stdout == render(AlertConfig(lag_for="10m", lag_critical_seconds=7200))
    for bad, message in [
        ("lag_for=banana", "lag_for: 'banana' is not a Prometheus duration"),
        ("failed_syncs=three", "failed_syncs: 'three' is not a whole number"),
        ("nonsense=1", "nonsense: unknown setting"),
        ("lag_for", "--set takes NAME=VALUE"),
    ]:
        output = tmp_path / "rules.yml"
        assert main(["rules", "--set", bad, "--output", str(output)]) == 2
        assert message in capsys.readouterr().err
        assert not output.exists(), "nothing written for a bad value"
    assert main(["rules", "--list"]) == 0
    assert "lag_for=5m  (duration)" in capsys.readouterr().out.splitlines()


def test_the_runbooks_page_has_a_section_for_every_alert_link() -> None:
    html = page()
    for name in alert_names():
        assert f'<h2 id="{anchor(name)}">{name}</h2>' in html
    rules = yaml.safe_load(render())
    for rule in (r for g in rules["groups"] for r in g["rules"] if "alert" in r):
        fragment = rule["annotations"]["runbook_url"].rpartition("#")[2]
        assert f'id="{fragment}"' in html, rule["alert"]
    assert "<pre><code>" in html and "<script" not in html


async def test_the_exporter_serves_its_runbooks() -> None:
    async with running_farm() as run:
        status, body = await run.get("/runbooks")
    assert status == 200 and 'id="bitbucketmirrordriftunknown"' in body
