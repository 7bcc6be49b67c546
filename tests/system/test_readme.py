"""The README's first two commands are the demo and the test suite, and the demo command works as written: it
starts, serves /metrics that promtool accepts, and stops on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest

from tests.tools import binary as tool

REPO = Path(__file__).resolve().parent.parent.parent
README = REPO / "README.md"


def first_commands() -> list[str]:
    block = re.search(r"```sh\n(.*?)```", README.read_text(), re.DOTALL)
    assert block is not None, "the README must start with a sh block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_the_readme_starts_with_the_demo_and_the_tests() -> None:
    assert first_commands() == ["./scripts/demo", "./scripts/test"]
    assert "Python 3.11 or newer" in README.read_text()[:1500]
    assert "\n./scripts/test\n" in (REPO / ".ci" / "run").read_text()


def test_the_demo_command_as_written_serves_metrics(tmp_path: Path) -> None:
    command = first_commands()[0]
    if not (REPO / ".venv" / "bin" / "python").exists():
        pytest.skip("the demo script installs into .venv: run the suite through ./scripts/test")
    # As written, plus a free port so the test does not collide with a demo someone is running.
    process = subprocess.Popen(
        [str(REPO / command), "--web.listen-address", "127.0.0.1:0", "--demo.interval", "0.5"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("BITBUCKET_MIRROR_EXPORTER_")},
    )
    watchdog = threading.Timer(60, lambda: os.killpg(process.pid, signal.SIGKILL))
    watchdog.start()
    try:
        assert process.stdout is not None
        url = ""
        for line in process.stdout:
            if line.startswith("Metrics: "):
                url = line.removeprefix("Metrics: ").strip()
                break
        assert url.startswith("http://127.0.0.1:"), "the demo never printed its metrics URL"
        ready = url.replace("/metrics", "/-/ready")
        for _ in range(100):
            try:
                with urllib.request.urlopen(ready, timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            threading.Event().wait(0.1)
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        assert 'bitbucket_mirror_up{mirror="sydney"} 1.0' in text
        assert 'bitbucket_mirror_drift_fresh{mirror="frankfurt"} 1.0' in text
        check = subprocess.run(
            [tool("promtool", "prometheus"), "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
        )
        assert check.returncode == 0, check.stdout + check.stderr
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        watchdog.cancel()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
