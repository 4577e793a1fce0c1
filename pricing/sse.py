"""Server-sent events, parsed incrementally and without I/O.

The proxy forwards bytes as they arrive and feeds the same bytes here to find
the messages that carry usage. (In this code base an "event" is a ledger
event; what the WHATWG event stream format calls an event is a message here.)
Lines end with CRLF, LF or CR and a message ends at a blank line, as that
format says; nothing else ends a line
(``str.splitlines`` would also cut at U+2028, U+0085 and friends, which JSON
carries raw inside strings).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MAX_EVENT_BYTES", "SseMessage", "SseSplitter"]

MAX_EVENT_BYTES = 8 * 1024 * 1024  # far above any real event; bounds what one stream can make us hold

_LINE_END = re.compile(rb"[\r\n]")
_CR = 0x0D
_LF = 0x0A


@dataclass(frozen=True, slots=True)
class SseMessage:
    raw: bytes  # the message's bytes, terminator included, exactly as received
    event: str | None  # its ``event:`` field, the protocol's name for its type
    data: str


class SseSplitter:
    """Cuts a byte stream into messages, each ending at a blank line.

    Whatever the chunking, the same bytes give the same messages, and the
    ``raw`` of every message returned by :meth:`feed` and :meth:`end`, followed
    by :meth:`rest`, is exactly the bytes fed. A message longer than
    ``max_event_bytes`` is handed back in pieces of that size (and a last,
    shorter one) with ``event=None`` and ``data=""``: forwarded, never read.
    """

    def __init__(self, *, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        if max_event_bytes < 1:
            raise ValueError("max_event_bytes must be positive")
        self._max = max_event_bytes
        self._buffer = bytearray()  # bytes not yet handed back: the start of the next event
        self._scanned = 0  # the buffer before this offset is already cut into lines
        self._line_start = 0  # offset of the line being read; negative once handed back in a piece
        self._oversized = False  # the event being read passed the cap: the rest of it is not read

    def feed(self, chunk: bytes) -> list[SseMessage]:
        """The events that ``chunk`` completes, in order; amortized linear in the bytes fed."""
        buffer = self._buffer
        buffer += chunk
        events: list[SseMessage] = []
        pos = self._scanned
        while (match := _LINE_END.search(buffer, pos)) is not None:
            at = match.start()
            if buffer[at] == _CR:
                if at + 1 == len(buffer):
                    pos = at  # maybe the first half of a CRLF: decide when the next byte comes
                    break
                end = at + 2 if buffer[at + 1] == _LF else at + 1
            else:
                end = at + 1
            blank = at == self._line_start
            pos = self._line_start = end
            if blank:
                self._cut(end, events)
                pos = 0
        else:
            pos = len(buffer)
        self._scanned = pos
        self._spill(events)
        return events

    def end(self) -> list[SseMessage]:
        """The stream ended: the event held back because its blank line ended
        in a CR that might have been the first half of a CRLF (if any)."""
        events: list[SseMessage] = []
        buffer = self._buffer
        if buffer and self._scanned == len(buffer) - 1 == self._line_start and buffer[-1] == _CR:
            self._cut(len(buffer), events)
        return events

    def rest(self) -> bytes:
        """Bytes after the last event handed back (a stream cut mid-event)."""
        return bytes(self._buffer)

    def _cut(self, end: int, events: list[SseMessage]) -> None:
        """Hand back the event that ends at ``end``, in pieces if it is too long."""
        while end > self._max:
            self._piece(self._max, events)
            end -= self._max
        raw = bytes(self._buffer[:end])
        events.append(SseMessage(raw=raw, event=None, data="") if self._oversized else _parse(raw))
        del self._buffer[:end]  # a bytearray drops its head without copying the tail
        self._scanned = self._line_start = 0
        self._oversized = False

    def _spill(self, events: list[SseMessage]) -> None:
        # Cut at fixed offsets from the event's start, so the pieces do not
        # depend on how the stream was chunked.
        while len(self._buffer) > self._max:
            self._piece(self._max, events)
            self._scanned -= self._max
            self._line_start -= self._max

    def _piece(self, size: int, events: list[SseMessage]) -> None:
        events.append(SseMessage(raw=bytes(self._buffer[:size]), event=None, data=""))
        del self._buffer[:size]
        self._oversized = True


def _parse(raw: bytes) -> SseMessage:
    name: str | None = None
    data: list[str] = []
    for line in raw.splitlines():  # bytes split at CR, LF and CRLF only (str would split at more)
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"event":
            name = value.decode("utf-8", "replace")
        elif field == b"data":
            data.append(value.decode("utf-8", "replace"))
    return SseMessage(raw=raw, event=name, data="\n".join(data))
