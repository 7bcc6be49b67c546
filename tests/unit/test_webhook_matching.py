"""Matching each mirror's sync to the push it completes (pure: the book, and the event dates)."""

from __future__ import annotations

import pytest

from exporter.webhooks.matching import Book, Change
from exporter.webhooks.receiver import Malformed, parse_date

A, B, C = "a" * 40, "b" * 40, "c" * 40


def change(to_hash: str) -> Change:
    return Change("refs/heads/main", to_hash)


def test_a_sync_completes_its_push_once_per_mirror() -> None:
    book = Book(timeout=3600, max_pending=100)
    book.pushed("1", [change(A)], pushed_at=100.0, now=100.0)
    assert book.synchronized("sydney", "1", [change(A)], False, "incremental", 107.0) == [7.0]
    assert book.synchronized("sydney", "1", [change(A)], False, "incremental", 109.0) == []  # already confirmed
    assert book.synchronized("tokyo", "1", [change(A)], False, "snapshot", 130.0) == [30.0]
    assert book.histograms[("sydney", "incremental")].counts[3] == 1  # the 10 s bucket
    assert book.synced("1", A) == {"sydney": 107.0, "tokyo": 130.0}


def test_a_sync_that_came_before_its_push_is_timed_when_the_push_comes() -> None:
    book = Book(timeout=3600, max_pending=100)
    assert book.synchronized("sydney", "1", [change(A)], False, "incremental", 107.0) == []
    assert book.synchronized("tokyo", "1", [change(A)], False, "incremental", 99.0) == []  # an earlier push's
    book.pushed("1", [change(A)], pushed_at=100.0, now=100.0)
    assert book.histograms[("sydney", "incremental")].counts[3] == 1 and ("tokyo", "incremental") not in book.histograms
    assert book.synchronized("sydney", "1", [change(A)], False, "incremental", 108.0) == [], "already confirmed"
    assert book.synchronized("tokyo", "1", [change(A)], False, "incremental", 110.0) == [10.0]
    book.expire(101.0, ["sydney", "tokyo"])
    assert book.pending == 0 and book.unconfirmed == {}


def test_early_syncs_are_kept_in_a_bounded_table() -> None:
    book = Book(timeout=3600, max_pending=100)
    for i in range(1000):
        book.synchronized("sydney", str(i), [change(A)], False, "incremental", 100.0)
    assert book.early_syncs == 100
    book.pushed("0", [change(A)], 100.0, 100.0)  # long forgotten: nothing observed
    book.pushed("999", [change(A)], 100.0, 100.0)
    assert book.histograms[("sydney", "incremental")].counts[0] == 1


def test_ref_limit_exceeded_completes_the_oldest_unconfirmed_push_made_before_it() -> None:
    book = Book(timeout=3600, max_pending=100)
    book.pushed("1", [change(A)], 100.0, 100.0)
    book.pushed("1", [change(B)], 110.0, 110.0)
    book.pushed("1", [change(C)], 200.0, 200.0)  # after the sync below: not its to complete
    assert book.synchronized("sydney", "1", [], True, "snapshot", 150.0) == [50.0]
    assert book.synchronized("sydney", "1", [], True, "snapshot", 160.0) == [50.0]  # then the next oldest (B)
    assert book.synchronized("sydney", "1", [], True, "snapshot", 170.0) == []  # C came later


def test_pushes_no_mirror_confirms_in_time_are_counted_per_mirror_and_forgotten() -> None:
    book = Book(timeout=60, max_pending=100)
    book.pushed("1", [change(A)], 100.0, now=1000.0)
    book.pushed("2", [change(B)], 100.0, now=1000.0)
    book.synchronized("sydney", "1", [change(A)], False, "incremental", 105.0)
    book.expire(1030.0, ["sydney", "tokyo"])
    assert book.unconfirmed == {} and book.pending == 2
    book.expire(1061.0, ["sydney", "tokyo"])
    assert book.unconfirmed == {"tokyo": 2, "sydney": 1} and book.pending == 0


def test_a_push_every_mirror_confirmed_leaves_the_table_at_once() -> None:
    book = Book(timeout=60, max_pending=100)
    book.pushed("1", [change(A)], 100.0, now=1000.0)
    book.synchronized("sydney", "1", [change(A)], False, "incremental", 105.0)
    book.expire(1001.0, ["sydney"])
    assert book.pending == 0 and book.unconfirmed == {}
    assert book.synced("1", A) == {"sydney": 105.0}  # the gate still knows


def test_a_flood_costs_a_bounded_table_and_is_counted() -> None:
    book = Book(timeout=3600, max_pending=100)
    for i in range(1000):
        book.pushed(str(i), [change(f"{i:040x}")], 100.0, 100.0)
    assert book.pending == 100 and book.evicted == 900
    for i in range(1000):
        assert not book.replayed(f"id-{i}", 100.0)
    assert book.replayed("id-999", 100.0) and not book.replayed("id-0", 100.0)  # the oldest ids were let go


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2019-03-01T10:37:14+0100", 1551433034.0),  # as documented: an offset without a colon
        ("2019-03-01T09:37:14Z", 1551433034.0),
        ("2019-03-01T10:37:14+01:00", 1551433034.0),
        (1551433034000, 1551433034.0),  # epoch milliseconds
    ],
)
def test_event_dates(text: object, seconds: float) -> None:
    assert parse_date(text) == seconds


@pytest.mark.parametrize("text", [None, True, "yesterday", "2019-03-01T10:37:14"])
def test_bad_event_dates(text: object) -> None:
    with pytest.raises(Malformed):
        parse_date(text)


def test_a_coalesced_sync_confirms_every_earlier_push_of_its_ref_each_with_its_own_latency() -> None:
    # A busy mirror syncs A, B and C of main at once and names only C (the newest) in its event.
    book = Book(timeout=60, max_pending=100)
    book.pushed("1", [change(A)], 100.0, 100.0)
    book.pushed("1", [change(B)], 104.0, 104.0)
    book.pushed("1", [Change("refs/heads/other", "d" * 40)], 105.0, 105.0)  # another ref: not covered
    book.pushed("1", [change(C)], 106.0, 106.0)
    book.pushed("1", [change("e" * 40)], 130.0, 130.0)  # after C: not covered
    assert sorted(book.synchronized("sydney", "1", [change(C)], False, "incremental", 110.0)) == [4.0, 6.0, 10.0]
    histogram = book.histograms[("sydney", "incremental")]
    assert sum(histogram.counts) == 3 and histogram.total == 20.0
    assert book.synced("1", A) == {"sydney": 110.0} and book.synced("1", B) == {"sydney": 110.0}
    assert book.synced("1", "d" * 40) == {} and book.synced("1", "e" * 40) == {}
    book.expire(1000.0, ["sydney"])
    assert book.unconfirmed == {"sydney": 2}  # the other ref's push and the one after C, not A or B


def test_a_coalesced_sync_that_came_before_its_push_confirms_the_earlier_pushes_when_it_comes() -> None:
    book = Book(timeout=60, max_pending=100)
    book.pushed("1", [change(A)], 100.0, 100.0)
    assert book.synchronized("sydney", "1", [change(B)], False, "incremental", 108.0) == []  # B not seen yet
    book.pushed("1", [change(B)], 104.0, 104.0)
    assert sum(book.histograms[("sydney", "incremental")].counts) == 2
    book.expire(1000.0, ["sydney"])
    assert book.unconfirmed == {}


def test_a_push_whose_event_comes_after_the_coalesced_sync_is_confirmed_by_it() -> None:
    book = Book(timeout=60, max_pending=100)
    book.pushed("1", [change(B)], 104.0, 104.0)
    assert book.synchronized("sydney", "1", [change(B)], False, "incremental", 108.0) == [4.0]
    book.pushed("1", [change(A)], 100.0, 109.0)  # pushed before B, its event delivered late
    book.pushed("1", [change(C)], 110.0, 110.0)  # pushed after the sync: not confirmed by it
    assert sum(book.histograms[("sydney", "incremental")].counts) == 2
    assert book.synced("1", A) == {"sydney": 108.0}
    book.expire(1000.0, ["sydney"])
    assert book.unconfirmed == {"sydney": 1}


def test_pushes_in_one_second_arriving_out_of_order_are_ordered_by_their_hashes() -> None:
    # Three pushes of main in the same second (dates have whole seconds): Z->A, A->B, B->C. The mirror's sync names C;
    # B's event arrives last. The hashes prove B and A came before C; a date alone could not.
    book = Book(timeout=60, max_pending=100)
    z = "0" * 39 + "1"
    book.pushed("1", [Change("refs/heads/main", A, z)], 100.0, 100.0)
    book.pushed("1", [Change("refs/heads/main", C, B)], 100.0, 100.0)
    assert book.synchronized("sydney", "1", [Change("refs/heads/main", C, B)], False, "incremental", 103.0) == [3.0]
    book.pushed("1", [Change("refs/heads/main", B, A)], 100.0, 101.0)
    assert sum(book.histograms[("sydney", "incremental")].counts) == 3
    # A later push in the same second that C did not lead to stays pending.
    book.pushed("1", [Change("refs/heads/main", "d" * 40, C)], 100.0, 101.0)
    book.expire(1000.0, ["sydney"])
    assert book.unconfirmed == {"sydney": 1}
