"""The command line as a user runs it: --version, the demo process, and clean shutdown on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from exporter import __version__

REPO = Path(__file__).parent.parent.parent


def exporter_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "exporter", *args]


def test_version() -> None:
    result = subprocess.run(exporter_command("--version"), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert result.stdout.strip() == f"bitbucket-mirror-exporter {__version__}"


def test_bad_listen_address_is_a_usage_error() -> None:
    result = subprocess.run(
        exporter_command("run", "--web.listen-address", "nowhere"), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "--web.listen-address" in result.stderr


def read_line(proc: subprocess.Popen[str], pattern: str, timeout: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    buffer = ""
    while time.monotonic() < deadline:
        chunk = proc.stdout.readline()
        if chunk:
            buffer += chunk
            if match := re.search(pattern, buffer):
                return match
        elif proc.poll() is not None:
            break
        else:
            time.sleep(0.05)
    pytest.fail(f"no line matching {pattern!r} within {timeout}s; got {buffer!r}")


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_demo_serves_metrics_and_stops_cleanly_on_sigterm() -> None:
    proc = subprocess.Popen(
        exporter_command("demo", "--web.listen-address", "127.0.0.1:0", "--demo.interval", "0.5"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        url = read_line(proc, r"Metrics: (http://127\.0\.0\.1:\d+)/metrics", timeout=30).group(1)
        deadline = time.monotonic() + 20
        while http_get(url + "/-/ready")[0] != 200:
            assert time.monotonic() < deadline, "demo never became ready"
            time.sleep(0.1)
        status, text = http_get(url + "/metrics")
        assert status == 200
        assert 'bitbucket_mirror_up{mirror="sydney"} 1.0' in text
        assert 'bitbucket_mirror_up{mirror="frankfurt"} 1.0' in text
        # A farm of three nodes per mirror, each read at its own URL.
        for node in (1, 2, 3):
            assert f'bitbucket_mirror_node_up{{mirror="sydney",node="sydney-node-{node}"}} 1.0' in text
        # The simulated primary's webhooks reach the demo's exporter (pushes come twice a second).
        deadline = time.monotonic() + 20
        while 'bitbucket_mirror_webhook_requests_total{event="repo:refs_changed",outcome="accepted"}' not in text:
            assert time.monotonic() < deadline, "no push webhook accepted"
            time.sleep(0.2)
            text = http_get(url + "/metrics")[1]
        # Every node's JMX read (the reading that warned about the simulator's tagged timers).
        deadline = time.monotonic() + 20
        while (
            text.count("bitbucket_mirror_jmx_up{") < 6
            or 'jmx_up{mirror="frankfurt",node="frankfurt-node-3"} 1.0' not in text
        ):
            assert time.monotonic() < deadline, "the nodes' JMX never read"
            time.sleep(0.2)
            text = http_get(url + "/metrics")[1]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        _, stderr = proc.communicate(timeout=5)
        assert 'msg="exporter stopped"' in stderr
        # Every log line is one structured logfmt record; the demo's faults are states to see on /metrics, none a
        # failure: a warning would be of the demo's own making.
        for line in stderr.strip().splitlines():
            assert re.match(r"^ts=\S+ level=(debug|info) logger=\S+ msg=", line), line
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
