"""The scale benchmark's memory sampler (bench/scale_clients.py ``Instruments``): PSS is read when the summed RSS
rises, not on a timer, because reading smaps_rollup holds the process's memory-map lock and moved the scrapes' tail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.scale_clients import PSS_RISE_BYTES, Instruments
from tests.conftest import held_within

MIB = 1 << 20
REPOSITORY = Path(__file__).resolve().parent.parent.parent


def test_the_sampler_reads_pss_once_the_summed_rss_rises_and_finds_the_rise() -> None:
    instruments = Instruments()
    instruments.start()
    try:
        assert held_within(lambda: instruments.pss_readings >= 1)
        before = instruments.peak_pss
        assert before is not None
        ballast = b"\x01" * (64 * MIB)  # every page written: resident
        assert held_within(lambda: (instruments.peak_pss or 0) >= before + 60 * MIB)
        # The reading that found it was taken with the RSS it explains: nothing of the peak went unread beyond the
        # rise the sampler lets pass without a reading (and what the interpreter allocated meanwhile).
        unread = instruments.stop()["pss_unread_rss_bytes"]
        assert unread is not None and unread <= PSS_RISE_BYTES + 4 * MIB
        del ballast
    finally:
        instruments.stop()


def test_the_sampler_reads_no_pss_while_the_summed_rss_stays_where_it_was() -> None:
    instruments = Instruments()
    instruments.start()
    try:
        assert held_within(lambda: instruments.pss_readings >= 1 and instruments.rss_samples >= 3)
        readings, samples = instruments.pss_readings, instruments.rss_samples
        assert held_within(lambda: instruments.rss_samples >= samples + 5)
        assert instruments.pss_readings == readings
    finally:
        instruments.stop()


def test_the_benchmarks_exporter_process_never_loads_what_the_exporter_does_not() -> None:
    """The exporter never imports ``cryptography`` or ``requests``: the bench's certificate for the TLS row is issued
    by a process of its own, and only the synchronous client imports requests, so the exporter's measured memory
    carries neither (about 11 and 5 MB)."""
    probe = (
        "import sys\n"
        "from bench.scale_clients import bench_web_config\n"
        "config, scraping = bench_web_config('tls')\n"
        "assert config is not None and config.tls_server_config is not None and 'ca_file' in scraping\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] in ('cryptography', 'requests')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPOSITORY, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
