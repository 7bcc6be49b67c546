"""What the HTTP side refused: aiohttp's unparsable requests counted and logged once per change of kind; a bug in a
handler logged as it is, with its traceback."""

from __future__ import annotations

import logging
import sys

import pytest
from aiohttp.http_exceptions import BadHttpMessage

from exporter.web.refusals import Refusals


def record(exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except type(exc):
        info = sys.exc_info()
    return logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "Error handling request", None, info)


def test_unparsable_requests_are_counted_by_kind_and_logged_once_per_change(caplog: pytest.LogCaptureFixture) -> None:
    refusals = Refusals()
    caplog.set_level(logging.WARNING, logger="exporter")
    for _ in range(50):
        assert refusals.logger.filter(record(BadHttpMessage("Duplicate Content-Length"))) is False
    assert refusals.counts == {"bad_http_message": 50}
    assert [r.getMessage() for r in caplog.records].count("http request refused") == 1


def test_a_bug_in_a_handler_is_not_taken_for_a_refusal() -> None:
    refusals = Refusals()
    assert refusals.logger.filter(record(KeyError("bug"))) is True
    assert refusals.counts == {}
