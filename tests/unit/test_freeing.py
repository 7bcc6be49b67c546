"""Freeing replaced snapshots off the event loop: large containers taken apart piece by piece, and only when nothing
else still holds them."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from exporter.sources import _dismantle


class Row:
    """A repository row: weak-referenceable, so a test can see it freed."""


@dataclass
class Analysis:
    rows: dict[str, Row]
    primary: dict[str, Row]


def test_what_only_the_snapshot_holds_is_freed_and_what_is_shared_is_left_whole() -> None:
    rows = {str(i): Row() for i in range(2000)}
    freed = [weakref.ref(row) for row in rows.values()]
    primary = {str(i): Row() for i in range(2000)}  # still the state's current listing
    item = [Analysis(rows, primary)]
    del rows
    _dismantle(item)
    assert item == [] and all(ref() is None for ref in freed)
    assert len(primary) == 2000


def test_a_large_list_inside_a_dict_is_taken_apart_too() -> None:
    inner = [Row() for _ in range(1000)]
    freed = [weakref.ref(row) for row in inner]
    item: list[object] = [{"rows": inner, "small": [Row()]}]
    del inner
    _dismantle(item)
    assert all(ref() is None for ref in freed)
