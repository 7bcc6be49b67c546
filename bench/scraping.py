"""A scrape as the benchmarks time it: as Prometheus asks (gzip), timed until the whole body has arrived.

Prometheus sends ``Accept-Encoding: gzip`` and the exporter keeps each rendering compressed, so a scrape moves a tenth
of the bytes. The body is read as sent, not decompressed: Prometheus decompresses in its own process, while the
benchmarks' scrapers share one loop, where ten decompressions in a burst would be timed as the exporter's (about
0.3 ms each for the ~150 KB at 100k x 3 x 3 on an idle core; the bench never parsed an identity body either)."""

from __future__ import annotations

import time
from collections.abc import Mapping

import aiohttp

PROMETHEUS_HEADERS = {"Accept-Encoding": "gzip"}


def scrape_session(timeout: float, connector: aiohttp.BaseConnector | None = None) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout), connector=connector, auto_decompress=False
    )


async def timed_scrape(http: aiohttp.ClientSession, url: str, headers: Mapping[str, str] = PROMETHEUS_HEADERS) -> float:
    """One scrape's seconds; an error status raises, and so does a body not gzipped (what would be timed is then
    not what Prometheus gets)."""
    began = time.perf_counter()
    async with http.get(url, headers=headers) as resp:
        await resp.read()
        resp.raise_for_status()
        if resp.headers.get("Content-Encoding") != "gzip":
            raise RuntimeError(f"{url} answered without gzip: {resp.headers.get('Content-Encoding')}")
    return time.perf_counter() - began
