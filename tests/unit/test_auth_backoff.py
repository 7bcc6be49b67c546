"""An address whose password checks keep failing is refused without a check for a while, doubling each time it fails
again (exporter/web/auth.py); a right password checked from it clears that (one already remembered passes without a
check and leaves the count: an address shared with a guesser does not reset it at every scrape), and other addresses
are never held."""

from __future__ import annotations

import base64
import time

import bcrypt

from exporter.web.auth import FAILURES_BEFORE_BACKOFF, BasicAuth

USER, PASSWORD = "prometheus", "right"


def header(password: str, user: str = USER) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_an_address_that_keeps_failing_waits_one_second_then_two_and_a_right_password_clears_it() -> None:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    auth = BasicAuth({USER: hashed, "scraper": hashed})
    attacker, prometheus = "127.0.0.2", "127.0.0.1"
    for guess in range(FAILURES_BEFORE_BACKOFF):
        verdict = await auth.check(header(f"guess-{guess}"), attacker)
        assert verdict.allowed is False and verdict.retry_after is None, "checked: 401"
    began = time.monotonic()
    held = await auth.check(header("another"), attacker, now=began)
    assert held.allowed is False and held.retry_after is not None and 0 < held.retry_after <= 1.0
    assert auth.refused_backoff == 1, "refused without a check: 429"
    assert (await auth.check(header(PASSWORD, "scraper"), prometheus, now=began)).allowed, "another address is free"
    # The second after: checked again; failing once more doubles the wait.
    verdict = await auth.check(header("again"), attacker, now=began + 1.5)
    assert verdict.allowed is False and verdict.retry_after is None
    doubled = await auth.check(header("more"), attacker, now=time.monotonic() + 0.5)
    assert doubled.retry_after is not None and 1.0 < doubled.retry_after <= 1.5, "two seconds, half of it gone"
    # The right password once the wait is over clears the count: as many wrong ones as at first are checked again.
    assert (await auth.check(header(PASSWORD), attacker, now=time.monotonic() + 2.5)).allowed
    for typo in range(FAILURES_BEFORE_BACKOFF):
        after = await auth.check(header(f"typo-{typo}"), attacker, now=time.monotonic() + 2.5)
        assert after.allowed is False and after.retry_after is None, typo
