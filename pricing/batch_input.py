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
from taximeter.pricing.jsonl import JsonLines
from taximeter.pricing.usage import Family

__all__ = ["BATCH_ENDPOINTS", "BatchInput", "BatchInputReader", "ModelLines"]

# The endpoints a batch line may call, as the Batch API lists them.
BATCH_ENDPOINTS: dict[str, Family] = {
    "/v1/chat/completions": "chat",
    "/v1/responses": "responses",
    "/v1/embeddings": "embeddings",
    "/v1/completions": "completions",
    "/v1/moderations": "moderation",
}
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
        self._lines = JsonLines(self._line)
        self._default_output = default_output_tokens
        self._unseen_input = unseen_input_tokens

    def feed(self, chunk: bytes) -> None:
        self._lines.feed(chunk)

    def end(self) -> BatchInput:
        self._lines.end()
        return self.read

    def _line(self, line: bytes | None) -> None:
        self.read.lines += 1
        if line is None or not self._take(line):  # too long, or not a request
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
