"""The alert rules through the real promtool and amtool: rules check, the unit tests in tests/alerts/ (every
alert both ways), the example Alertmanager route, and the generator's command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from alerts.rules import RULES_FILE, AlertConfig
from tests.tools import binary as tool
from tests.unit.test_alerts import AM_EXAMPLE, REPO, UNIT_TESTS


def test_promtool_check_rules() -> None:
    result = subprocess.run(
        [tool("promtool", "prometheus"), "check", "rules", str(REPO / RULES_FILE)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests() -> None:
    result = subprocess.run(
        [tool("promtool", "prometheus"), "test", "rules", str(UNIT_TESTS)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_thresholds_and_selector_are_overridable(tmp_path: Path) -> None:
    out = tmp_path / "rules.yml"
    args = ["--set", 'selector=job="bb-mirrors"', "--set", "lag_critical_seconds=7200", "--output", str(out)]
    subprocess.run([sys.executable, "-m", "alerts", *args], check=True, cwd=REPO, timeout=60)
    text = out.read_text()
    assert 'bitbucket_mirror_up{job="bb-mirrors"} == 0' in text
    assert "> 7200" in text and "> 3600" not in text
    assert AlertConfig.with_overrides({"mirror_down_for": "1m"}).mirror_down_for == "1m"


def test_an_unknown_setting_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "alerts", "--set", "lag_warning=1", "--output", "/dev/null"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "lag_warning: unknown setting" in result.stderr


def test_the_example_alertmanager_route_is_valid() -> None:
    result = subprocess.run(
        [tool("amtool", "prometheus-alertmanager"), "check-config", str(AM_EXAMPLE)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    routes = yaml.safe_load(AM_EXAMPLE.read_text())["route"]["routes"]
    receiver = {m: r["receiver"] for r in routes for m in r["matchers"] if m.startswith("severity=")}
    assert receiver['severity="critical"'] == "pager" and receiver['severity="warning"'] == "tickets"
