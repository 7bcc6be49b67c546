"""A real headless browser (Debian's chromium) for the pages the exporter serves: the DOM after rendering and a
screenshot, each from a fresh profile, with the flags this machine's closed network needs."""

from __future__ import annotations

import asyncio
import subprocess
from html.parser import HTMLParser
from pathlib import Path

from tests.tools import binary

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def chromium() -> str:
    # Ubuntu has no chromium deb (only a snap): skipped there, but never in CI.
    return binary("chromium", "chromium", skip_outside_ci=True)


async def _run(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    # In a thread: the page may be served by this test's own event loop, which must keep running meanwhile.
    command = [chromium(), *FLAGS, f"--user-data-dir={profile}", *args]
    return await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60)


async def dom(url: str, workdir: Path) -> str:
    """The page's DOM as the browser built it."""
    result = await _run(["--dump-dom", url], workdir / "profile-dom")
    assert result.returncode == 0 and result.stdout.strip(), result.stderr[-2000:]
    return result.stdout


async def screenshot(url: str, workdir: Path, name: str = "page.png", size: str = "1600,700") -> Path:
    path = workdir / name
    result = await _run([f"--screenshot={path}", f"--window-size={size}", url], workdir / f"profile-{name}")
    assert result.returncode == 0 and path.is_file(), result.stderr[-2000:]
    return path


class Tables(HTMLParser):
    """Every table of a page as rows of cell texts and classes, keyed by the table's id."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[tuple[str, str]]]] = {}
        self._table: list[list[tuple[str, str]]] | None = None
        self._cell: list[str] | None = None
        self._class = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(attributes.get("id") or f"table{len(self.tables)}", [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th"):
            self._cell, self._class = [], attributes.get("class") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table:
            self._table[-1].append(("".join(self._cell).strip(), self._class))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def rows_by_first_cell(page: str, table: str) -> dict[str, dict[str, tuple[str, str]]]:
    """{first cell's text: {column header: (text, class)}} for one table of the page."""
    parser = Tables()
    parser.feed(page)
    header, *rows = parser.tables[table]
    names = [text for text, _ in header]
    return {row[0][0]: dict(zip(names, row, strict=True)) for row in rows}
