"""Server-sent events, parsed incrementally and without I/O.

The proxy forwards bytes as they arrive and feeds the same bytes here to find
the events that carry usage.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SseEvent", "SseSplitter"]


@dataclass(frozen=True, slots=True)
class SseEvent:
    raw: bytes  # the event's bytes, terminator included, exactly as received
    event: str | None
    data: str


class SseSplitter:
    """Cuts a byte stream into complete events (``\\n\\n`` or ``\\r\\n\\r\\n``)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._buffer += chunk
        events: list[SseEvent] = []
        while True:
            cut = _boundary(self._buffer)
            if cut is None:
                return events
            raw, self._buffer = self._buffer[:cut], self._buffer[cut:]
            events.append(_parse(raw))

    def rest(self) -> bytes:
        """Bytes after the last complete event (a stream cut mid-event)."""
        return self._buffer


def _boundary(buffer: bytes) -> int | None:
    ends = [i + len(sep) for sep in (b"\n\n", b"\r\n\r\n") if (i := buffer.find(sep)) >= 0]
    return min(ends) if ends else None


def _parse(raw: bytes) -> SseEvent:
    name: str | None = None
    data: list[str] = []
    for line in raw.decode("utf-8", "replace").splitlines():
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
    return SseEvent(raw=raw, event=name, data="\n".join(data))
