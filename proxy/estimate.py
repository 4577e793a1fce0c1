"""What a call may cost, estimated before it is forwarded (pure).

The estimate is reserved against the budget at admission and replaced by the
actual usage when the call ends. It errs high where the request bounds the
output (``max_tokens`` and friends) and uses a per-call default where it does
not, so a budget's overrun under concurrency stays within the bound stated in
the README.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from taximeter.pricing.usage import Usage
from taximeter.proxy.extract import estimate_tokens, request_text

__all__ = ["estimate_usage"]

_OUTPUT_LIMIT_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
_IMAGE_PART_TOKENS = 1_105  # a high-detail 1024x1024 image on GPT-4o-class models
_SPEECH_CHARS_PER_SECOND = 14  # about 150 spoken words a minute


def _output_limit(request: dict[str, Any], default: int) -> int:
    for name in _OUTPUT_LIMIT_FIELDS:
        value = request.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default


def _count(value: Any, default: int = 1) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return default
    return number if number > 0 else default


def _image_parts(request: dict[str, Any]) -> int:
    count = 0
    for key in ("messages", "input"):
        items = request.get(key)
        if isinstance(items, list):
            for item in items:
                content = item.get("content") if isinstance(item, dict) else None
                if isinstance(content, list):
                    count += sum(
                        1
                        for p in content
                        if isinstance(p, dict) and p.get("type") in ("image_url", "input_image")
                    )
    return count


def estimate_usage(
    family: str,
    request: dict[str, Any],
    *,
    default_output_tokens: int,
    default_audio_seconds: Decimal,
    upload_seconds: Decimal | None = None,
) -> Usage:
    """A deliberately high estimate of what the call will consume."""
    if family in ("chat", "completions", "responses"):
        choices = _count(request.get("n"))
        prompt = estimate_tokens(request_text(request)) + _IMAGE_PART_TOKENS * _image_parts(request)
        return Usage(
            input_tokens=prompt, output_tokens=choices * _output_limit(request, default_output_tokens)
        )
    if family == "embeddings":
        text = request.get("input")
        if isinstance(text, list) and text and all(isinstance(t, int) for t in text):
            return Usage(input_tokens=len(text))  # already tokens
        return Usage(input_tokens=estimate_tokens(request_text(request)))
    if family == "speech":
        characters = len(request["input"]) if isinstance(request.get("input"), str) else 0
        seconds = Decimal(characters) / _SPEECH_CHARS_PER_SECOND
        return Usage(characters=characters, audio_seconds=seconds.quantize(Decimal("0.001")))
    if family == "transcription":
        return Usage(audio_seconds=upload_seconds or default_audio_seconds)
    if family == "image":
        size = request.get("size") if isinstance(request.get("size"), str) else "1024x1024"
        quality = request.get("quality") if isinstance(request.get("quality"), str) else None
        return Usage(images=_count(request.get("n")), image_size=size, image_quality=quality)
    return Usage()
