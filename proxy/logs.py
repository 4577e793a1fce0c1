"""Logging set-up: plain or JSON lines, with the ``extra=`` fields of each event.

Callers log fixed event names with fields in ``extra``; nothing logs keys,
Authorization headers or request and response bodies. Two defences stand
behind that rule, for text that reaches a log line from outside (a model
name, a path, a header aiohttp quotes in a parse error):

- every record is one line: the plain format escapes control characters in
  the message and in each field, and quotes a field that holds a space; JSON
  lines are escaped by the encoder;
- :data:`REDACTOR` blanks anything shaped like a key or bearer token, and the
  configured secrets, in the message, the fields and the traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import queue
import re
import sys
from collections.abc import Iterable, Iterator
from logging.handlers import QueueHandler, QueueListener
from typing import Any

__all__ = [
    "REDACTOR",
    "JsonFormatter",
    "PlainFormatter",
    "Redactor",
    "configure_logging",
    "escape_controls",
    "protect_logs",
    "written_in_background",
]

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

# C0, DEL and C1 controls, and the two Unicode line separators: everything
# str.splitlines() (or a terminal) would treat as the end of a line.
_CONTROLS: dict[int, str] = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_CONTROLS |= {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"}
_NEEDS_QUOTES = re.compile(r'[\s="\\\x00-\x1f\x7f-\x9f\u2028\u2029]')
# aiohttp's own loggers (aiohttp/log.py); a logger's filters see only what is
# logged on it, not what its children propagate, so each is named.
_AIOHTTP_LOGGERS = ("aiohttp.access", "aiohttp.client", "aiohttp.internal", "aiohttp.server", "aiohttp.web")


def escape_controls(text: str) -> str:
    """``text`` with every control character written as its escape (``\\n``,
    ``\\x00``): whatever it holds, it stays on one line."""
    return text.translate(_CONTROLS)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


def _plain_value(value: Any) -> str:
    """A field value as logfmt writes it: bare when it is one plain word,
    else quoted with backslash escapes, so no value can pose as another field."""
    text = str(value)
    if text and not _NEEDS_QUOTES.search(text):
        return text
    return '"' + escape_controls(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def _json_safe(value: Any) -> Any:
    # NaN and infinities would be written as bare NaN/Infinity: not JSON.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _text(value: Any) -> str:
    """What the JSON encoder writes for a value it cannot encode itself."""
    try:
        return str(value)
    except Exception:  # a broken __str__ must not cost the log line
        return f"<unprintable {type(value).__name__}>"


class JsonFormatter(logging.Formatter):
    """One JSON object per line; the encoder escapes every control character
    (and, ASCII-only, every non-ASCII one)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
            **{k: _json_safe(v) for k, v in _fields(record).items()},
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:  # formatted already, by the handler that queued it
            line["exc"] = record.exc_text
        try:
            return json.dumps(line, default=_text)
        except (TypeError, ValueError, RecursionError):  # a field json cannot walk (a cycle)
            return json.dumps({k: v if isinstance(v, str) else _text(v) for k, v in line.items()})


class PlainFormatter(logging.Formatter):
    """``<time> <level> <logger> <event> key=value ...`` on one line; a
    traceback follows on lines indented by two spaces, so a line that starts
    at the margin is always a record."""

    def format(self, record: logging.LogRecord) -> str:
        head = logging.makeLogRecord(record.__dict__)
        head.msg, head.args = escape_controls(record.getMessage()), None
        head.exc_info = head.exc_text = head.stack_info = None
        base = super().format(head)
        fields = " ".join(f"{escape_controls(k)}={_plain_value(v)}" for k, v in _fields(record).items())
        line = f"{base} {fields}".rstrip()
        trace = self.formatException(record.exc_info) if record.exc_info else record.exc_text
        for extra in (trace, record.stack_info and self.formatStack(record.stack_info)):
            if extra:
                line += "".join(f"\n  {escape_controls(part)}" for part in extra.split("\n"))
        return line


# -- secrets ------------------------------------------------------------------------

_REDACTED = "[redacted]"
_KEY_PREFIX_CHARS = 12  # a virtual key's display prefix (keys.py): shown by the admin API too
_CREDENTIALS = re.compile(
    r"""(?P<scheme>\b(?:(?i:bearer)|Basic)\s+)(?P<token>[^\s'"]+)  # any token after its auth scheme
      | (?<![A-Za-z0-9])(?P<key>(?:tm_|sk-)[A-Za-z0-9_-]{12,})     # taximeter and OpenAI-style keys
    """,
    re.VERBOSE,
)
_MIN_SECRET_CHARS = 8  # a shorter "secret" would blank common words in every line


def _hide(match: re.Match[str]) -> str:
    token = match["token"] or match["key"]
    kept = token[:_KEY_PREFIX_CHARS] if token.startswith("tm_") else "sk-" if token.startswith("sk-") else ""
    return (match["scheme"] or "") + kept + _REDACTED


class Redactor(logging.Filter):
    """Blanks keys, bearer tokens and the configured secrets in a record's
    message, fields, traceback and stack. A ``tm_`` key keeps its display
    prefix, so an operator can still tell which key it was. Never drops a
    record."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: re.Pattern[str] | None = None
        self._known: set[str] = set()

    def add_secrets(self, secrets: Iterable[str]) -> None:
        """Also blank these exact values (admin and metrics tokens, upstream keys)."""
        new = {s for s in secrets if len(s) >= _MIN_SECRET_CHARS} - self._known
        if new:
            self._known |= new
            # Longest first: a secret that contains another is blanked whole.
            ordered = sorted(self._known, key=len, reverse=True)
            self._secrets = re.compile("|".join(re.escape(s) for s in ordered))

    def redact(self, text: str) -> str:
        if self._secrets is not None:
            text = self._secrets.sub(_REDACTED, text)
        return _CREDENTIALS.sub(_hide, text)

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {k: self._value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self._value(v) for v in value)
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        # The message is rendered here, once: an argument may be what holds the secret.
        record.msg, record.args = self.redact(record.getMessage()), None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for name, value in _fields(record).items():
            setattr(record, name, self._value(value))
        return True


# One per process, like the loggers it guards.
REDACTOR = Redactor()


def protect_logs(secrets: Iterable[str] = ()) -> None:
    """Put :data:`REDACTOR` on aiohttp's loggers (a parse error quotes the raw
    header line, Authorization included) and have it also blank ``secrets``.
    Idempotent."""
    REDACTOR.add_secrets(secrets)
    for name in _AIOHTTP_LOGGERS:
        logger = logging.getLogger(name)
        if REDACTOR not in logger.filters:
            logger.addFilter(REDACTOR)


class _QueueHandler(QueueHandler):
    """Hands records to the writer thread; a full queue drops (and counts)
    rather than making the event loop wait on a slow stderr."""

    def __init__(self, records: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(records)
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # The message and traceback become text here; the extra= fields stay.
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args, record.exc_info = record.getMessage(), None, None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


@contextlib.contextmanager
def written_in_background(max_queued: int = 10_000) -> Iterator[None]:
    """Format and write log records in a thread while inside: a log line
    costs the event loop a queue put, never a write to stderr. On the way
    out every queued record is written."""
    root = logging.getLogger()
    handlers = root.handlers[:]
    records: queue.Queue[logging.LogRecord] = queue.Queue(max_queued)
    handler = _QueueHandler(records)
    listener = QueueListener(records, *handlers, respect_handler_level=True)
    listener.start()
    root.handlers[:] = [handler]
    try:
        yield
    finally:
        root.handlers[:] = handlers
        listener.stop()
        if handler.dropped:
            logging.getLogger("taximeter.logs").warning(
                "log_records_dropped", extra={"count": handler.dropped}
            )


def configure_logging(level: str, as_json: bool) -> None:
    """Log to stderr, one line per record, every record through :data:`REDACTOR`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if as_json else PlainFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    # On the handler, it sees every logger's records (a handler filter also
    # runs in the background writer thread, off the event loop).
    handler.addFilter(REDACTOR)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    protect_logs()
