"""A finished batch's output and error files, read line by line as they
stream past (pure), and each line's usage as it is charged (spec section 4b).

Each line becomes its own ledger event, known by a key unique in its batch
(its ``custom_id``; its place in its file when it has none or cannot be
read), so charging the same file again, in any process, charges nothing
twice. A line the upstream ran but whose usage cannot be read is charged
what one line of the batch was estimated at; a line it refused is free.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from typing import Any

import orjson

from taximeter.pricing.extract import extract_usage, parse_usage
from taximeter.pricing.jsonl import JsonLines
from taximeter.pricing.usage import Family, Usage

__all__ = ["BATCH_TIER", "TERMINAL", "BatchOutputReader", "OutputLine", "line_usage"]

BATCH_TIER = "batch"  # every line is priced at the batch tier, whatever its body says
# A batch in one of these states runs no more: its files are final.
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


@dataclass(frozen=True, slots=True)
class OutputLine:
    """One line of a batch's output or error file: the key that makes its
    event unique in the batch, the status of the response the upstream gave
    it (0: none), and that response's body (None: none, or unreadable)."""

    key: str
    status: int
    body: Any
    readable: bool = True


class BatchOutputReader:
    """Feed it a file's bytes in chunks of any size; :meth:`take` hands out
    the lines read so far (a few at a time: never the whole file)."""

    def __init__(self, file: str) -> None:
        self._file = file  # "output" or "error": where an unkeyed line's place is counted
        self._lines = JsonLines(self._line)
        self._count = 0
        self._seen: set[str] = set()
        self._ready: list[OutputLine] = []

    def feed(self, chunk: bytes) -> None:
        self._lines.feed(chunk)

    def end(self) -> None:
        self._lines.end()

    def take(self) -> list[OutputLine]:
        ready, self._ready = self._ready, []
        return ready

    def _line(self, line: bytes | None) -> None:
        self._count += 1
        place = f"{self._file}-{self._count}"
        parsed = _parsed(line)
        if parsed is None:
            self._ready.append(OutputLine(place, 0, None, readable=False))
            return
        custom_id, status, body = parsed
        key = _key(custom_id) if custom_id is not None else place
        if key in self._seen:  # a custom_id the batch repeats: each line is charged
            key = f"{key}~{place}"
        self._seen.add(key)
        self._ready.append(OutputLine(key, status, body))


def _parsed(line: bytes | None) -> tuple[str | None, int, Any] | None:
    """``(custom_id, status, body)`` of a line, None when it is not one."""
    if line is None:
        return None
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    custom_id = data.get("custom_id")
    response = data.get("response")
    if not isinstance(response, dict):
        return (custom_id if isinstance(custom_id, str) else None), 0, None
    code = response.get("status_code")
    status = code if isinstance(code, int) and not isinstance(code, bool) and 100 <= code <= 599 else 0
    return (
        (custom_id if isinstance(custom_id, str) else None),
        status,
        response.get("body"),
    )


def _key(custom_id: str) -> str:
    """A line's custom_id as a key: as is when short and plain, else its hash."""
    if _PLAIN_KEY.fullmatch(custom_id):
        return custom_id
    return "h-" + hashlib.sha256(custom_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def line_usage(family: Family, line: OutputLine) -> tuple[Usage, int]:
    """What a line is charged for, at the batch tier, and the status it is
    recorded with. A line the upstream answered with success but no readable
    usage (or that could not be read at all) is ``estimated``: charged as
    the batch's estimate of one line. A refused line, or one with no
    response, is free unless its body reports tokens."""
    if not line.readable:
        return Usage(service_tier=BATCH_TIER, estimated=True), 0
    if line.status == 0 or line.status >= 400:
        body = line.body if isinstance(line.body, dict) else {}
        reported = parse_usage(body.get("usage"))
        usage = reported if reported is not None and not reported.estimated else Usage()
        return replace(usage, service_tier=BATCH_TIER), line.status or 500
    usage = extract_usage(family, {}, line.body)
    return replace(usage, service_tier=BATCH_TIER), line.status
