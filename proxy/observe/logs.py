"""Log formatting: JSON lines for machines, key=value text for people.

Structured fields travel in `extra={"fields": {...}}`. Callers never put a token in a message
or a field; the fingerprint is the only token-derived value that is logged.

SECURITY, the net under that rule: whatever a message, a field or an exception's text says (a
library's exception can quote a full URL), both formatters redact the query string of any URL
and anything shaped like a JWT before a line is written. The README promises that queries are
never logged; this makes it hold for third-party text too.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import weakref
from collections.abc import Callable
from typing import IO, Any

from proxy.redaction import SECRETS, redact

_STDLIB_KEYS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "fields",
}


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (list, tuple)):
        return [_redacted(v) for v in value]
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    return value


def _timestamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


# Set by observe.tracing while tracing is on: the current span's trace_id and span_id (or None
# outside a trace), added to every log line written inside a traced request.
TRACE_IDS: list[Callable[[], dict[str, str] | None]] = []


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    if fields is not None:  # the proxy's own records: no need to scan the record
        out = dict(fields)
    else:
        out = {  # plain `extra=` keys (libraries)
            key: value
            for key, value in record.__dict__.items()
            if key not in _STDLIB_KEYS and not key.startswith("_")
        }
    if TRACE_IDS:
        out.update(TRACE_IDS[0]() or {})
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key, value in _fields(record).items():
            out.setdefault(key, _redacted(value))
        if record.exc_info:
            out["exception"] = SECRETS.scrub(redact(self.formatException(record.exc_info)))
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
        if record.exc_info:  # exception text can quote what came from outside
            line += "\n" + SECRETS.scrub(redact(self.formatException(record.exc_info)))
        return redact(line)


class BufferedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes log lines in batches: at most `max_delay` seconds late, at once for warnings and
    errors, and at 64 KiB. A write (and flush) per access-log line was a large share of the
    proxy's CPU under load."""

    def __init__(self, stream: IO[str], max_delay: float = 0.2) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._size = 0
        self._max_delay = max_delay
        self._oldest = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        if not self._lines:
            self._oldest = record.created
        self._lines.append(line)
        self._size += len(line)
        if (
            record.levelno >= logging.WARNING
            or self._size >= 65536
            or record.created - self._oldest >= self._max_delay
        ):
            self.flush()

    def append(self, line: str, created: float) -> None:
        """A formatted INFO line, straight from `direct_json` (no LogRecord)."""
        if not self._lines:
            self._oldest = created
        self._lines.append(line)
        self._size += len(line)
        if self._size >= 65536 or created - self._oldest >= self._max_delay:
            self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._lines:
                self.stream.write("\n".join(self._lines) + "\n")
                self._lines.clear()
                self._size = 0
            if hasattr(self.stream, "flush"):
                self.stream.flush()


class Repeats:
    """Summarises a warning that repeats: per key (kind, route, ...), the first is logged in
    full; later ones within `interval` seconds are only counted; the first one after the
    interval is logged again carrying how many were held back (`repeated`), and `report()`
    (run by `flush_logs`) writes one summary line for a count whose interval ended quietly.
    A broken token answering 401 to every request writes a line a minute, not thousands; the
    metrics still count every one."""

    def __init__(
        self, logger: logging.Logger, interval: float = 60.0, clock: Any = time.monotonic
    ) -> None:
        self._log = logger
        self.interval = interval
        self._clock = clock
        self._windows: dict[tuple[str, ...], tuple[float, int, str, dict[str, Any]]] = {}
        _ALL_REPEATS.add(self)

    def admit(self, key: tuple[str, ...], what: str, fields: dict[str, Any]) -> int | None:
        """None: count this one, don't log it. Otherwise log it, with the returned number of
        occurrences held back since the last line (0 the first time)."""
        now = self._clock()
        window = self._windows.get(key)
        if window is not None and now - window[0] < self.interval:
            self._windows[key] = (window[0], window[1] + 1, what, fields)
            return None
        held = window[1] if window is not None else 0
        self._windows[key] = (now, 0, what, fields)
        return held

    def report(self) -> None:
        """One summary line per key whose interval ended with occurrences held back."""
        now = self._clock()
        for key, (started, held, what, fields) in list(self._windows.items()):
            if now - started < self.interval:
                continue
            del self._windows[key]
            if held:
                self._log.warning(
                    "%d more %s in the last %.0f s (summarised)",
                    held,
                    what,
                    self.interval,
                    extra={"fields": fields | {"repeated": held}},
                )


_ALL_REPEATS: weakref.WeakSet[Repeats] = weakref.WeakSet()  # what flush_logs reports


def flush_logs() -> None:
    """Write out summaries of repeated warnings and buffered log lines (called periodically by
    the server and at exit)."""
    for repeats in _ALL_REPEATS:
        repeats.report()
    for handler in logging.getLogger().handlers:
        handler.flush()


_DIRECT: list[BufferedStreamHandler] = []  # the JSON handler, when the process logs JSON


def direct_json(
    logger: str, message: str, fields: dict[str, Any], redacted: tuple[str, ...]
) -> bool:
    """Write an INFO line as JsonFormatter would, without a LogRecord, when the process logs
    JSON through `setup_logging` (the access log: one line per request, the hottest log path).
    `redacted`: the fields that can carry client text and are scrubbed like any other line;
    the rest are numbers or config labels. False: log it the usual way."""
    if not _DIRECT:
        return False
    created = time.time()
    out: dict[str, Any] = {
        "time": _timestamp(created),
        "level": "info",
        "logger": logger,
        "message": redact(message),
    }
    for key, value in fields.items():
        out.setdefault(key, redact(value) if key in redacted and isinstance(value, str) else value)
    _DIRECT[0].append(json.dumps(out, default=str), created)
    return True


def setup_logging(fmt: str, level: str, stream: IO[str] | None = None) -> None:
    """Send every log record to stderr in the chosen format (`auto`: text on a terminal)."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "text" if stream.isatty() else "json"
    handler = BufferedStreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    _DIRECT[:] = [handler] if fmt == "json" else []
    # aiohttp's own access log is replaced by ours; its server errors stay visible.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
