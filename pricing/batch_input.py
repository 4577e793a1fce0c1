"""What a Batch API input file asks for, read line by line as it streams past
(pure): how many requests, to which endpoint, of which models, and a
deliberately high estimate of their tokens - what a batch made of it reserves
at admission (spec section 4b). Only one line is held at a time, so a 200 MB
file costs one line's memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

from taximeter.pricing.estimate import estimate_usage
from taximeter.pricing.usage import Family

__all__ = ["BATCH_ENDPOINTS", "MAX_LINE_BYTES", "BatchInput", "BatchInputReader"]

# The endpoints a batch line may call, as the Batch API lists them.
BATCH_ENDPOINTS: dict[str, Family] = {
    "/v1/chat/completions": "chat",
    "/v1/responses": "responses",
    "/v1/embeddings": "embeddings",
    "/v1/completions": "completions",
    "/v1/moderations": "moderation",
}
MAX_LINE_BYTES = 8 * 1024 * 1024  # a longer line is not read (counted as unreadable)
_MAX_MODELS = 1_000  # distinct models one file may name before the rest are unreadable


@dataclass
class ModelLines:
    """The lines of one model: how many, and their estimated tokens."""

    lines: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class BatchInput:
    """A batch input file as read: ``unreadable`` counts lines that are not
    a request taximeter can estimate (bad JSON, an unknown endpoint, no
    model, too long); a batch of such a file is not admitted."""

    lines: int = 0
    unreadable: int = 0
    endpoints: set[str] = field(default_factory=set)
    models: dict[str, ModelLines] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "unreadable": self.unreadable,
            "endpoints": sorted(self.endpoints),
            "models": {
                name: {"lines": m.lines, "input_tokens": m.input_tokens, "output_tokens": m.output_tokens}
                for name, m in sorted(self.models.items())
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchInput:
        return cls(
            lines=int(data["lines"]),
            unreadable=int(data["unreadable"]),
            endpoints=set(data["endpoints"]),
            models={
                name: ModelLines(int(m["lines"]), int(m["input_tokens"]), int(m["output_tokens"]))
                for name, m in data["models"].items()
            },
        )


class BatchInputReader:
    """Feed it the file's bytes in chunks of any size; :attr:`read` holds the
    running result, complete after :meth:`end`."""

    def __init__(self, *, default_output_tokens: int, unseen_input_tokens: int) -> None:
        self.read = BatchInput()
        self._line = bytearray()
        self._skipping = False  # inside a line past MAX_LINE_BYTES
        self._default_output = default_output_tokens
        self._unseen_input = unseen_input_tokens

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

    def end(self) -> BatchInput:
        if self._line.strip() or self._skipping:
            self._end_line()
        return self.read

    def _end_line(self) -> None:
        skipped, self._skipping = self._skipping, False
        line, self._line = bytes(self._line), bytearray()
        if not skipped and not line.strip():
            return  # blank lines are not requests
        self.read.lines += 1
        if skipped or not self._take(line):
            self.read.unreadable += 1

    def _take(self, line: bytes) -> bool:
        try:
            request = orjson.loads(line)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(request, dict) or not isinstance(request.get("body"), dict):
            return False
        url, body = request.get("url"), request["body"]
        family = BATCH_ENDPOINTS.get(url) if isinstance(url, str) else None
        model = body.get("model")
        if family is None or not isinstance(model, str) or not 0 < len(model) <= 256:
            return False
        lines = self.read.models.get(model)
        if lines is None:
            if len(self.read.models) >= _MAX_MODELS:
                return False
            lines = self.read.models[model] = ModelLines()
        usage = estimate_usage(
            family,
            body,
            default_output_tokens=self._default_output,
            default_audio_seconds=Decimal(0),
            unseen_input_tokens=self._unseen_input,
        )
        self.read.endpoints.add(str(url))
        lines.lines += 1
        lines.input_tokens += usage.input_tokens
        lines.output_tokens += usage.output_tokens
        return True
