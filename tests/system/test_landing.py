"""The landing page in a real headless browser: a row per target (the primary too), counts and lag per mirror, the
failing and stale sources with their reason, and nothing stale shown as current (a mirror whose listing answers 401
must not look "up / SYNCHRONIZED" with its old counts)."""

from __future__ import annotations

from pathlib import Path

from matplotlib import image

from exporter.simulator import Scenario
from tests.browser import dom, rows_by_first_cell, screenshot
from tests.conftest import Running, running_farm, value, wait_until

INTERVAL = 0.2
BAD = (0xF4, 0xC7, 0xC3)  # td.bad's background in exporter/web/landing.py


def bad_pixels(png: Path) -> int:
    pixels = image.imread(str(png))[:, :, :3]
    want = [c / 255 for c in BAD]
    close = (abs(pixels[:, :, 0] - want[0]) < 0.02) & (abs(pixels[:, :, 1] - want[1]) < 0.02)
    return int((close & (abs(pixels[:, :, 2] - want[2]) < 0.02)).sum())


async def test_the_landing_page_in_a_browser_tells_the_truth_while_a_source_fails(tmp_path: Path) -> None:
    # Values stay fresh for 2 s (10 intervals): a cycle slowed by a loaded machine must not make the healthy page
    # "unknown" while the browser starts.
    scenario = Scenario(repositories=6)
    async with running_farm(scenario, ["9.x", "8.x"], interval=INTERVAL, stale_after_seconds=2.0) as run:
        await run.wait_ready()
        await run.leave_behind("sydney", [2])
        await run.next_cycles(2)
        healthy = rows_by_first_cell(await dom(run.url + "/", tmp_path), "targets")
        assert set(healthy) == {"primary", "sydney", "frankfurt"}
        assert healthy["primary"]["Up"] == ("up", "ok") and healthy["primary"]["Repositories"][0] == "6"
        sydney = healthy["sydney"]
        assert sydney["Up"] == ("up", "ok") and sydney["State"] == ("SYNCHRONIZED", "ok")
        assert (sydney["In sync"][0], sydney["Out of sync"][0], sydney["Missing"][0]) == ("5", "1", "0")
        assert sydney["Lag"][0].endswith("s") and sydney["Lag"][0] != "0s"
        assert healthy["frankfurt"]["Lag"] == ("0s", "num")
        assert healthy["frankfurt"]["Failing or stale sources"] == ("none", "ok")
        assert bad_pixels(await screenshot(run.url + "/", tmp_path, "healthy.png")) == 0

        # sydney's listing answers 401 and its /status fails: once stale, nothing of it may look current.
        await run.control(
            "/sim/mirrors/sydney", {"faults": {"repo_sync_status": "unauthorized", "status": "unavailable"}}
        )
        await wait_until(lambda: _stale(run), 15, "sydney's values stale")
        page = await dom(run.url + "/", tmp_path)
        broken = rows_by_first_cell(page, "targets")["sydney"]
        assert broken["Up"] == ("down", "bad")
        assert broken["State"][0] == "" and broken["Repositories"][0] == ""
        assert broken["In sync"] == broken["Out of sync"] == broken["Lag"] == ("unknown", "warn")
        text, style = broken["Failing or stale sources"]
        assert style == "bad" and "status: http_503" in text and "repo_sync_status: http_401" in text
        sources = rows_by_first_cell(page, "sources")
        assert sources["sydney"]["Condition"][0] in ("failing, values left out (stale)", "failing, values still served")
        # frankfurt is untouched.
        assert rows_by_first_cell(page, "targets")["frankfurt"]["Up"] == ("up", "ok")
        assert bad_pixels(await screenshot(run.url + "/", tmp_path, "broken.png")) > 500


async def _stale(run: Running) -> bool:
    samples = await run.metrics()
    return (
        value(samples, "bitbucket_mirror_state", mirror="sydney", state="SYNCHRONIZED") is None
        and value(samples, "bitbucket_mirror_drift_fresh", mirror="sydney") == 0.0
    )
