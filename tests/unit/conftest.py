"""Fixtures the unit tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from exporter.rest import listing_work
from exporter.rest.listing_work import Store


@pytest.fixture
def store() -> Iterator[Store]:
    """A fresh store of the listings' work (the worker process's module state, here in this process)."""
    fresh = Store()
    previous, listing_work.STORE = listing_work.STORE, fresh
    yield fresh
    listing_work.STORE = previous
