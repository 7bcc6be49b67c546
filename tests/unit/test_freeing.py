"""Freeing replaced snapshots off the event loop: large containers taken apart piece by piece, and only when nothing
else still holds them."""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from dataclasses import dataclass

from exporter.sources import _dismantle, free_later
from tests.conftest import held_within


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


# The threads the CountedRows were freed on.
FREED_ON: list[str] = []


class CountedRow:
    """A row that says on which thread it was freed."""

    def __del__(self) -> None:
        FREED_ON.append(threading.current_thread().name)


def test_a_value_replaced_on_the_event_loop_is_taken_apart_off_it_after_the_step_that_replaced_it() -> None:
    FREED_ON.clear()

    async def replace() -> None:
        previous = {str(i): CountedRow() for i in range(2000)}
        free_later(previous)
        # The step still holds it for a while after handing it over (the thread runs meanwhile: the sleep lets go of
        # the GIL). A thread that looked now would find it held, leave it, and the rows would be freed here.
        time.sleep(0.02)  # noqa: ASYNC251 - blocking on purpose: a step that has not ended yet
        del previous

    asyncio.run(replace())
    assert held_within(lambda: len(FREED_ON) == 2000)
    assert set(FREED_ON) == {"free-snapshots"}
