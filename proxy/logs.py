"""Log formatting: JSON lines for machines, key=value text for people.

Structured fields travel in `extra={"fields": {...}}`. Callers never put a token in a message
or a field; the fingerprint is the only token-derived value that is logged.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Any

_STDLIB_KEYS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "fields",
}


def _timestamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = dict(getattr(record, "fields", None) or {})
    for key, value in record.__dict__.items():  # plain `extra=` keys are kept too
        if key not in _STDLIB_KEYS and not key.startswith("_"):
            fields.setdefault(key, value)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _fields(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """`time level logger message key=value ...` for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            _timestamp(record.created),
            f"{record.levelname:<7}",
            record.name.removeprefix("amperity_proxy.") or record.name,
            record.getMessage(),
        ]
        fields = _fields(record)
        if fields:
            parts.append(" ".join(f"{k}={v}" for k, v in fields.items() if v is not None))
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(fmt: str, level: str, stream: IO[str] | None = None) -> None:
    """Send every log record to stderr in the chosen format (`auto`: text on a terminal)."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "text" if stream.isatty() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's own access log is replaced by ours; its server errors stay visible.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
