"""The CI gate's proof rules (a "yes" needs proof): a listing says "on the mirror" only when both walks compared began
after the push, moved onto the exporter's clock by the primary's offset and rounded up by a second; a sync event that
named the commit, or a later push of its ref, is proof too; anything else says why not."""

from __future__ import annotations

import pytest

from exporter.app import ExporterState
from exporter.drift import DriftReport, PrimaryRepo, RepoHealth, RepoState
from exporter.rest.client import ClockReading
from exporter.rest.state import MirrorState, PrimaryState
from exporter.sources import SourceState
from exporter.webhooks.config import WebhooksConfig
from exporter.webhooks.gate import answer, push_on_our_clock
from exporter.webhooks.matching import Book, Change
from exporter.webhooks.receiver import Receiver

NOW = 1_800_000_000.0
A, B, C = "a" * 40, "b" * 40, "c" * 40
CONTENT = "1" * 64


def state_with(report: DriftReport, primary_offset: float = 0.0, offset_known_within: float = 0.0) -> ExporterState:
    primary = PrimaryState(url="https://primary.example.com")
    primary.repositories = SourceState(
        value={"7": PrimaryRepo("1", "PRJ", "app", CONTENT, CONTENT)}, success=True, last_success_timestamp=NOW - 1
    )
    # Pinned by many answers (offset_known_within 0) unless a test says otherwise.
    primary.clock = ClockReading(primary_offset, NOW - 1, half_width_seconds=offset_known_within)
    mirror = MirrorState(name="sydney", url="https://sydney.example.com")
    mirror.drift = report
    return ExporterState(primary=primary, mirrors=[mirror])


def in_sync(rows_from: float) -> DriftReport:
    return DriftReport({RepoState.IN_SYNC: 1}, {}, [], inputs_at=NOW - 2, rows_from=rows_from)


def receiver() -> Receiver:
    return Receiver(lambda: WebhooksConfig(allow_unsigned=True), Book(3600, 1000), lambda server, name: name or "")


def ask(state: ExporterState, book_of: Receiver) -> dict[str, object]:
    found = answer(state, book_of, "PRJ", "app", A, now=NOW)
    assert found is not None
    mirror = found["mirrors"][0]
    assert isinstance(mirror, dict)
    return mirror


@pytest.mark.parametrize(
    ("pushed", "walks_began", "offset", "on_mirror", "reason"),
    [
        (NOW - 100, NOW - 50, 0.0, True, None),  # both walks began well after the push
        (NOW - 100, NOW - 100.5, 0.0, False, "listing_too_old"),  # a walk began before it (its end proves nothing)
        (NOW - 100, NOW - 99.5, 0.0, False, "listing_too_old"),  # within the second the date cuts off
        (NOW - 100, NOW - 98.9, 0.0, True, None),
        # The primary's clock runs 20 s ahead: its date of the push is 20 s later than on ours.
        (NOW - 80, NOW - 90, 20.0, True, None),
        (NOW - 80, NOW - 100.5, 20.0, False, "listing_too_old"),
    ],
)
def test_a_listing_is_proof_only_when_both_walks_began_after_the_push(
    pushed: float, walks_began: float, offset: float, on_mirror: bool, reason: str | None
) -> None:
    book = receiver()
    book.book.pushed("7", [Change("refs/heads/main", A, B)], pushed, NOW)
    verdict = ask(state_with(in_sync(walks_began), offset), book)
    assert verdict["on_mirror"] is on_mirror and verdict.get("reason") == reason
    assert verdict["by"] == ("listing" if on_mirror else None)


def test_a_primary_clock_known_only_to_half_a_second_needs_a_walk_begun_that_much_later() -> None:
    book = receiver()
    book.book.pushed("7", [Change("refs/heads/main", A, B)], NOW - 100, NOW)
    assert ask(state_with(in_sync(NOW - 98.9)), book)["on_mirror"] is True
    # One answer read the primary's clock: it may run half a second behind ours, so the push may be that much later.
    unsure = ask(state_with(in_sync(NOW - 98.9), offset_known_within=0.5), book)
    assert unsure["on_mirror"] is False and unsure["reason"] == "listing_too_old"
    assert ask(state_with(in_sync(NOW - 98.4), offset_known_within=0.5), book)["on_mirror"] is True


def test_behind_and_unknown_say_so_and_a_later_push_synced_proves_an_earlier_one() -> None:
    book = receiver()
    book.book.pushed("7", [Change("refs/heads/main", A, B)], NOW - 100, NOW)
    behind = DriftReport(
        {RepoState.CONTENT_DRIFT: 1},
        {"7": NOW - 100},
        [RepoHealth("7", "PRJ", "app", RepoState.CONTENT_DRIFT, 0, NOW - 100)],
        inputs_at=NOW - 2,
        rows_from=NOW - 10,
    )
    assert ask(state_with(behind), book)["reason"] == "not_synced"
    stale = DriftReport({RepoState.IN_SYNC: 1}, {}, [], inputs_at=NOW - 1000, rows_from=NOW - 1010)
    assert ask(state_with(stale), book)["reason"] == "stale"
    # A (pushed first), then C on the same ref: the mirror's sync names C only, and it covers A.
    book.book.pushed("7", [Change("refs/heads/main", C, A)], NOW - 90, NOW)
    book.book.synchronized("sydney", "7", [Change("refs/heads/main", C, A)], False, "incremental", NOW - 85)
    verdict = ask(state_with(behind), book)
    assert verdict["on_mirror"] is True and verdict["by"] == "webhook"


def test_a_push_date_moves_onto_our_clock_and_up_a_second() -> None:
    assert push_on_our_clock(1000.0, None) == 1001.0
    assert push_on_our_clock(1000.0, ClockReading(20.0, 0.0, half_width_seconds=0.0)) == 981.0
    # One answer alone allows offsets half a second either side: the latest moment takes the smallest.
    assert push_on_our_clock(1000.0, ClockReading(20.0, 0.0)) == 981.5
    assert push_on_our_clock(1000.0, ClockReading(0.4, 0.0)) == pytest.approx(1001.1)
