"""The committed OpenAPI fixture (tests/fixtures/openapi/) equals a fresh extraction from Atlassian's specs, where the
specs are beside the repository (../shared/reference, as on the developers' machines and in CI). On a plain clone
the specs are absent and the other tests use the committed fixture alone."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
REFERENCE = REPO.parent / "shared" / "reference"
SCRIPT = REPO / "scripts" / "extract-openapi-fixture"


def test_the_fixture_is_what_the_script_extracts_from_the_specs() -> None:
    if not (REFERENCE / "bitbucket-dc-9.2-openapi.json").is_file():
        pytest.skip(f"the official specs are not beside the repository ({REFERENCE}); the fixture is used as committed")
    loader = importlib.machinery.SourceFileLoader("extract_openapi_fixture", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    fresh = module.fixtures(REFERENCE)
    committed = {p.name: p.read_text() for p in (REPO / "tests" / "fixtures" / "openapi").glob("*.json")}
    assert fresh == committed, "run: scripts/extract-openapi-fixture"


def test_the_8x_fixture_reads_the_sync_scope_from_settings() -> None:
    import json

    paths = json.loads((REPO / "tests" / "fixtures" / "openapi" / "bitbucket-dc-8.x.json").read_text())["paths"]
    settings = paths["/mirroring/latest/upstreamServers/{upstreamId}/settings"]
    assert settings == {"$ref": "#/components/schemas/RestUpstreamSettings"}
    assert not any(p.endswith("/syncSettings") for p in paths)
