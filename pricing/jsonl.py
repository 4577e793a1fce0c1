"""A JSONL file read as it streams past (pure): chunks of any size in, one
line at a time out, never more than one line held. What the Batch API's
files are made of, input and output."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["MAX_LINE_BYTES", "JsonLines"]

MAX_LINE_BYTES = 8 * 1024 * 1024  # a longer line is not read: passed on as None


class JsonLines:
    """Feed it bytes; ``take`` gets each non-blank line, or None for a line
    longer than :data:`MAX_LINE_BYTES` (skipped, not held)."""

    def __init__(self, take: Callable[[bytes | None], None]) -> None:
        self._take = take
        self._line = bytearray()
        self._skipping = False  # inside a line past MAX_LINE_BYTES

    def feed(self, chunk: bytes) -> None:
        start = 0
        while start < len(chunk):
            newline = chunk.find(b"\n", start)
            end = len(chunk) if newline < 0 else newline
            if not self._skipping:
                self._line += chunk[start:end]
                if len(self._line) > MAX_LINE_BYTES:
                    self._line.clear()
                    self._skipping = True
            if newline < 0:
                return
            self._end_line()
            start = newline + 1

    def end(self) -> None:
        """The file ended: its last line, if it had no newline."""
        if self._line.strip() or self._skipping:
            self._end_line()

    def _end_line(self) -> None:
        skipped, self._skipping = self._skipping, False
        line, self._line = bytes(self._line), bytearray()
        if skipped:
            self._take(None)
        elif line.strip():  # blank lines are not requests
            self._take(line)
