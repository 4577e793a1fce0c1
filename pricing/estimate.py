"""What a call may cost, estimated before it is forwarded (pure).

The estimate is reserved against the budget at admission and replaced by the
actual usage when the call ends; when the usage never comes back (a cut
stream, an unreadable reply) it is the floor of what is charged. It errs high:
every input kind the API bills is counted (text anywhere in the request, token
arrays, images, files, audio, and the stored context that
``previous_response_id`` or ``conversation`` pulls in), and the output is the
request's own bound (``max_tokens`` and friends, times ``n``) or a per-call
default. The README states the overrun bound this gives.
"""

from __future__ import annotations

import math
from dataclasses import replace
from decimal import Decimal
from typing import Any

from taximeter.pricing.usage import Family, Usage

__all__ = ["at_least", "estimate_usage", "input_tokens"]

_OUTPUT_LIMIT_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
_CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb for English text
_IMAGE_PART_TOKENS = 1_105  # a high-detail 1024x1024 image on GPT-4o-class models
_AUDIO_BYTES_PER_TOKEN = 800  # ~10 audio tokens a second at 64 kbit/s, the leanest common encoding
_FILE_BYTES_PER_TOKEN = 4  # a file's text, read as bytes
_SPEECH_CHARS_PER_SECOND = 14  # about 150 spoken words a minute
_MAX_CHOICES = 128  # OpenAI's bound on `n`
_MAX_OUTPUT_TOKENS = 1_000_000  # beyond any model's output window: an upstream refuses more
_IMAGE_TYPES = ("image_url", "input_image")
_FILE_TYPES = ("file", "input_file")
_DATA_KEYS = ("data", "file_data", "image_url", "url")  # base64 or links: counted by their part


def _output_limit(request: dict[str, Any], default: int) -> int:
    for name in _OUTPUT_LIMIT_FIELDS:
        value = request.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return min(value, _MAX_OUTPUT_TOKENS)
    return default


def _count(value: Any, default: int = 1, bound: int = _MAX_CHOICES) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return default
    try:
        number = int(value)
    except ValueError:
        return default
    return min(number, bound) if number > 0 else default


def _decoded_size(data: Any) -> int:
    """Bytes a base64 payload (plain or a ``data:`` URL) decodes to."""
    if not isinstance(data, str):
        return 0
    payload = data.partition(",")[2] if data.startswith("data:") else data
    return len(payload) * 3 // 4


def _part_tokens(part: dict[str, Any], unseen_tokens: int) -> int:
    """Tokens of one content part that is not plain text."""
    kind = part.get("type")
    if kind in _IMAGE_TYPES:
        return _IMAGE_PART_TOKENS
    if kind in _FILE_TYPES:
        inner = part.get("file")
        file = inner if isinstance(inner, dict) else part
        size = _decoded_size(file.get("file_data"))
        return math.ceil(size / _FILE_BYTES_PER_TOKEN) if size else unseen_tokens  # by id or URL: unseen
    if kind == "input_audio":
        inner = part.get("input_audio")
        audio = inner if isinstance(inner, dict) else part
        return math.ceil(_decoded_size(audio.get("data")) / _AUDIO_BYTES_PER_TOKEN)
    return 0


def input_tokens(request: Any, unseen_tokens: int) -> int:
    """A high estimate of the input tokens of a request: every string in it
    (tool schemas and instructions are billed too) at 4 characters a token,
    every integer of a token array, and each image, file and audio part;
    ``unseen_tokens`` for input the request names but does not carry (a file
    by id, a stored response or conversation)."""
    tokens = 0
    stack: list[Any] = [request]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            tokens += math.ceil(len(node) / _CHARS_PER_TOKEN)
        elif isinstance(node, list):
            tokens += sum(1 for x in node if isinstance(x, int) and not isinstance(x, bool))
            stack.extend(x for x in node if isinstance(x, (str, list, dict)))
        elif isinstance(node, dict):
            tokens += _part_tokens(node, unseen_tokens)
            if node.get("previous_response_id") or node.get("conversation"):
                tokens += unseen_tokens
            stack.extend(v for k, v in node.items() if k not in _DATA_KEYS or not isinstance(v, str))
    return tokens


def estimate_usage(
    family: Family,
    request: dict[str, Any],
    *,
    default_output_tokens: int,
    default_audio_seconds: Decimal,
    unseen_input_tokens: int = 0,
    upload_seconds: Decimal | None = None,
) -> Usage:
    """A deliberately high estimate of what the call will consume."""
    if family in ("chat", "completions", "responses"):
        choices = _count(request.get("n"))
        return Usage(
            input_tokens=input_tokens(request, unseen_input_tokens),
            output_tokens=choices * _output_limit(request, default_output_tokens),
            # The dearest tier a request may ask for is reserved at its rates (a
            # long prompt reserves at long-context rates by its own count).
            service_tier="priority" if request.get("service_tier") == "priority" else None,
        )
    if family == "embeddings":
        return Usage(input_tokens=input_tokens(request.get("input"), unseen_input_tokens))
    if family == "speech":
        characters = len(request["input"]) if isinstance(request.get("input"), str) else 0
        seconds = Decimal(characters) / _SPEECH_CHARS_PER_SECOND
        return Usage(characters=characters, audio_seconds=seconds.quantize(Decimal("0.001")))
    if family == "transcription":
        return Usage(audio_seconds=upload_seconds or default_audio_seconds)
    if family == "image":
        size = request.get("size") if isinstance(request.get("size"), str) else "1024x1024"
        quality = request.get("quality") if isinstance(request.get("quality"), str) else None
        return Usage(images=_count(request.get("n"), bound=10), image_size=size, image_quality=quality)
    return Usage()


def at_least(usage: Usage, floor: Usage) -> Usage:
    """``usage`` raised, unit by unit, to ``floor`` (what was reserved), flagged
    estimated: the charge of a call whose count was lost or cut short."""
    return replace(
        usage,
        input_tokens=max(usage.input_tokens, floor.input_tokens),
        output_tokens=max(usage.output_tokens, floor.output_tokens),
        characters=max(usage.characters, floor.characters),
        audio_seconds=max(usage.audio_seconds, floor.audio_seconds),
        images=max(usage.images, floor.images),
        image_size=usage.image_size or floor.image_size,
        image_quality=usage.image_quality or floor.image_quality,
        service_tier=usage.service_tier or floor.service_tier,
        tool_calls={
            t: max(usage.tool_calls.get(t, 0), floor.tool_calls.get(t, 0))
            for t in {*usage.tool_calls, *floor.tool_calls}
        },
        estimated=True,
    )
