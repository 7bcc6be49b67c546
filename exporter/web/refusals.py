"""Requests and connections the exporter's HTTP side refused, counted by reason and logged once per change of reason.

A hostile or broken client can send thousands of malformed requests a second: each is counted
(``bitbucket_mirror_exporter_http_requests_refused_total{reason}``), and a line is logged only when the reason differs
from the previous refusal's, so the log cannot be flooded. aiohttp reports a request it cannot parse through its
server logger; ``logger`` is such a logger of this exporter's own, whose records become counts here.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator

from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client.core import CounterMetricFamily, Metric

log = logging.getLogger("exporter")

TOO_MANY_CONNECTIONS = "too_many_connections"
OUT_OF_FILE_DESCRIPTORS = "out_of_file_descriptors"
HEAD_TIMEOUT = "head_timeout"
BODY_TIMEOUT = "body_timeout"
PROBE_RATE_LIMITED = "probe_rate_limited"
ERROR = "error"


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class Refusals:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # the acceptor thread counts too
        self.counts: dict[str, int] = {}
        self._last: str | None = None
        self.logger = logging.Logger("exporter.http")
        self.logger.parent = logging.getLogger("exporter")
        self.logger.addFilter(self._from_aiohttp)

    def count(self, reason: str, detail: str = "") -> None:
        with self._lock:
            self.counts[reason] = self.counts.get(reason, 0) + 1
            changed = reason != self._last
            self._last = reason
        if changed:
            log.warning("http request refused", extra={"reason": reason, "detail": detail[:200]})

    def _from_aiohttp(self, record: logging.LogRecord) -> bool:
        """aiohttp's records of requests it could not parse: counted by the kind (``bad_http_message``,
        ``bad_http_method``, ``line_too_long``, ...), not passed on one by one. Anything else it logs (a bug in a
        handler) passes on as it is, with its traceback."""
        kind = record.exc_info[1] if record.exc_info else None
        if not isinstance(kind, HttpProcessingError):
            return True
        self.count(_snake(type(kind).__name__), str(kind.message or "") or record.getMessage())
        return False

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "bitbucket_mirror_exporter_http_requests_refused",
            "Requests and connections the exporter's own HTTP side refused, by reason: a request it could not parse "
            "(bad_http_message, bad_http_method, line_too_long, ...), too_many_connections, out_of_file_descriptors, "
            "head_timeout, body_timeout.",
            labels=["reason"],
        )
        with self._lock:
            counts = dict(self.counts)
        for reason, number in sorted(counts.items()):
            family.add_metric([reason], number)
        yield family
