"""Structured single-line logs (logfmt) on stderr, like the Prometheus exporters written in Go."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

LEVELS = ("debug", "info", "warn", "error")

_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _quote(value: object) -> str:
    text = str(value)
    if text and not any(c in text for c in ' ="\\\n\t'):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields: dict[str, Any] = {
            "ts": f"{when}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower().replace("warning", "warn"),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                fields[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            # Type only: exception text could carry request details we do not control.
            fields["exc"] = record.exc_info[0].__name__
        return " ".join(f"{k}={_quote(v)}" for k, v in fields.items())


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if level == "warn" else getattr(logging, level.upper()))
    # aiohttp's access log would print a line per scrape.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
