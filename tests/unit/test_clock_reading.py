"""A host's clock from the Date headers of its answers: every answer bounds the offset, and the bounds narrow."""

from __future__ import annotations

from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.rest.client import CLOCK_DRIFT_RATE, ClockReading, clock_reading
from exporter.rest.push_dating import offset_of


def answer(true_offset: float, sent: float, server_delay: float, return_delay: float) -> ClockReading:
    """One request sent at ``sent`` (our clock), answered ``server_delay`` later by a host ``true_offset`` ahead,
    received ``return_delay`` after that: what its Date header tells."""
    answered = sent + server_delay
    reading = clock_reading(formatdate(answered + true_offset, usegmt=True), sent, answered + return_delay)
    assert reading is not None
    return reading


def test_one_answer_allows_its_second_and_its_round_trip() -> None:
    date = 1_796_353_210.0
    reading = clock_reading(formatdate(date, usegmt=True), sent=date - 20.2, received=date - 19.9)
    assert reading is not None and reading.at == date - 19.9
    assert reading.earliest == pytest.approx(19.9) and reading.latest == pytest.approx(21.2)
    assert reading.half_width_seconds == pytest.approx(0.65)
    assert clock_reading(None, 0.0, 1.0) is None and clock_reading("not a date", 0.0, 1.0) is None


@given(
    st.floats(-120, 120),
    st.lists(st.tuples(st.floats(0, 1), st.floats(0, 2), st.floats(0, 2)), min_size=1, max_size=40),
)
def test_narrowed_answers_always_hold_the_true_offset(
    true_offset: float, requests: list[tuple[float, float, float]]
) -> None:
    now = 1_796_353_200.0
    kept: ClockReading | None = None
    for gap, server_delay, return_delay in requests:
        now += gap
        reading = answer(true_offset, now, server_delay, return_delay)
        kept = reading if kept is None else kept.narrowed(reading)
        assert kept.earliest - 1e-6 <= true_offset <= kept.latest + 1e-6
        now += server_delay + return_delay


def test_answers_whose_date_ticked_at_different_moments_pin_the_offset_though_most_are_slow() -> None:
    # The primary 20.3 s ahead, answering in 7 ms to 1.3 s (most of it its own work): one answer leaves a range of
    # 1-2.3 s; two hundred, of which a few came back quickly on one side or the other, leave a few milliseconds.
    kept: ClockReading | None = None
    now = 1_796_353_200.0
    for step in range(200):
        server_delay, return_delay = 0.005 + ((step * 0.37) % 1.0) ** 3, 0.002 + 0.3 * ((step * 0.61) % 1.0) ** 3
        reading = answer(20.3, now, server_delay, return_delay)
        kept = reading if kept is None else kept.narrowed(reading)
        now += server_delay + return_delay + 0.013
    assert kept is not None and kept.half_width_seconds < 0.02
    assert abs(kept.offset_seconds - 20.3) < 0.02 and offset_of(kept) == kept.offset_seconds


def test_a_stepped_clock_starts_afresh_and_a_drifting_one_is_followed() -> None:
    tight = ClockReading(20.0, 1000.0, half_width_seconds=0.01)
    stepped = ClockReading(25.0, 1001.0)
    assert tight.narrowed(stepped) == stepped, "nothing in common: the newest answer alone"
    # An hour later the kept range has widened by the drift possible meanwhile, so a reading 0.2 s off still joins it.
    later = ClockReading(20.3, 1000.0 + 3600, half_width_seconds=0.1)
    joined = tight.narrowed(later)
    widened = 0.01 + 3600 * CLOCK_DRIFT_RATE
    assert (joined.earliest, joined.latest) == (later.earliest, 20.0 + widened) and joined.at == later.at
    assert later.narrowed(tight) == joined, "the order they arrive in does not matter"


def test_clocks_that_may_agree_are_taken_as_agreeing() -> None:
    assert offset_of(None) == 0.0
    assert offset_of(ClockReading(0.4, 0.0)) == 0.0, "half a second either side holds zero"
    assert offset_of(ClockReading(0.4, 0.0, half_width_seconds=0.1)) == 0.4, "a narrowed range that does not"
    assert offset_of(ClockReading(-21.4, 0.0)) == -21.4


def test_a_step_smaller_than_one_answers_range_is_followed_within_seconds_of_answers() -> None:
    # Pinned at 20.3 s, then the host's clock is stepped by 0.3 s: answers still overlap the old range at first, until
    # one whose Date ticked just before it rules the old range out; then the new offset is pinned as the old was.
    kept: ClockReading | None = None
    now = 1_796_353_200.0
    for true_offset in (20.3, 20.6):
        for step in range(200):
            server_delay, return_delay = 0.005 + ((step * 0.37) % 1.0) ** 3, 0.002 + 0.3 * ((step * 0.61) % 1.0) ** 3
            reading = answer(true_offset, now, server_delay, return_delay)
            kept = reading if kept is None else kept.narrowed(reading)
            now += server_delay + return_delay + 0.013
        assert kept is not None and abs(kept.offset_seconds - true_offset) < 0.02, (true_offset, kept)
