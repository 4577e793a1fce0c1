"""Logging set-up: plain or JSON lines, with the ``extra=`` fields of each event.

Callers log fixed event names with fields in ``extra``; nothing logs keys,
Authorization headers or request and response bodies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sys
from collections.abc import Iterator
from logging.handlers import QueueHandler, QueueListener
from typing import Any

__all__ = ["configure_logging", "written_in_background"]

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:  # formatted already, by the handler that queued it
            line["exc"] = record.exc_text
        return json.dumps(line, default=str)


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        fields = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        return f"{base} {fields}".rstrip()


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
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if as_json else PlainFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
