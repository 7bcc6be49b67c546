"""The documents a user looks for exist and stay true: every error reason the exporter can report is explained in
docs/troubleshooting.md, every alert has its runbook, and no document points outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

from alerts.rules import alert_names
from exporter.rest import client

REPO = Path(__file__).resolve().parent.parent.parent


def test_license_changelog_and_troubleshooting_exist() -> None:
    assert "Apache License" in (REPO / "LICENSE").read_text()[:200]
    assert 'license = { text = "Apache-2.0" }' in (REPO / "pyproject.toml").read_text()
    assert (REPO / "CHANGELOG.md").read_text().startswith("# Changelog")


def test_every_rest_error_reason_is_explained_in_troubleshooting() -> None:
    text = (REPO / "docs" / "troubleshooting.md").read_text()
    reasons = {
        value
        for name, value in vars(client).items()
        if name.isupper() and isinstance(value, str) and re.fullmatch(r"[a-z_]+", value)
    }
    assert {"timeout", "html_response", "credentials", "tls"} <= reasons  # the scan finds the constants
    missing = {
        r for r in reasons if f"`{r}`" not in text and not (r == "page_cap" and "`page_loop` / `page_cap`" in text)
    }
    assert not missing, f"reasons not explained in docs/troubleshooting.md: {sorted(missing)}"
    for status in ("http_401", "http_403", "http_404", "http_429"):
        assert f"`{status}`" in text


def test_every_alert_has_a_runbook_section() -> None:
    runbooks = (REPO / "docs" / "runbooks.md").read_text()
    assert {name for name in alert_names() if f"## {name}\n" not in runbooks} == set()


def test_no_document_points_outside_the_repository() -> None:
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = doc.read_text()
        assert "../shared" not in text and "shared/reference" not in text, doc.name
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if target.startswith(("http://", "https://")):
                continue
            assert (doc.parent / target).resolve().is_relative_to(REPO), (doc.name, target)
            assert (doc.parent / target).exists(), f"{doc.name} links to {target}, which does not exist"
