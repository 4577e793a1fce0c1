"""Usage extraction: what a call consumed, read from its request and response.

Pure functions over parsed JSON (and counts the caller measured); no I/O. One
usage parser reads every shape OpenAI reports: ``prompt_tokens`` /
``completion_tokens`` (chat, embeddings), ``input_tokens`` / ``output_tokens``
(responses, images, speech, token-priced transcription) with their
``*_details``, and ``{"type": "duration", "seconds": …}`` (whisper).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from decimal import Decimal, InvalidOperation
from typing import Any

from taximeter.pricing.usage import Usage
from taximeter.proxy.sse import SseEvent

__all__ = [
    "StreamMeter",
    "estimate_tokens",
    "extract_usage",
    "has_image_part",
    "parse_usage",
    "request_text",
]

_CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb for English text; used only to estimate


def _int(obj: Any, *path: str) -> int:
    for key in path:
        if not isinstance(obj, dict):
            return 0
        obj = obj.get(key)
    return obj if isinstance(obj, int) and not isinstance(obj, bool) else 0


def _seconds(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return Decimal(0)
    try:
        seconds = Decimal(str(value))
    except InvalidOperation:
        return Decimal(0)
    return seconds if seconds.is_finite() and seconds > 0 else Decimal(0)


def parse_usage(usage: Any) -> Usage | None:
    """A Usage from any OpenAI ``usage`` object, or None if there is none."""
    if not isinstance(usage, dict):
        return None
    if usage.get("type") == "duration":
        return Usage(audio_seconds=_seconds(usage.get("seconds")))
    in_details = (
        usage.get("prompt_tokens_details")
        or usage.get("input_tokens_details")
        or usage.get("input_token_details")
    )
    out_details = usage.get("completion_tokens_details") or usage.get("output_tokens_details")
    return Usage(
        input_tokens=_int(usage, "prompt_tokens") or _int(usage, "input_tokens"),
        output_tokens=_int(usage, "completion_tokens") or _int(usage, "output_tokens"),
        cached_tokens=_int(in_details, "cached_tokens"),
        audio_input_tokens=_int(in_details, "audio_tokens"),
        image_input_tokens=_int(in_details, "image_tokens"),
        reasoning_tokens=_int(out_details, "reasoning_tokens"),
        audio_output_tokens=_int(out_details, "audio_tokens"),
    )


def _response_usage(body: Any) -> Usage | None:
    """Usage at ``body.usage`` or ``body.response.usage`` (Responses API events)."""
    if not isinstance(body, dict):
        return None
    found = parse_usage(body.get("usage"))
    if found is None and isinstance(body.get("response"), dict):
        found = parse_usage(body["response"].get("usage"))
    return found


def has_image_part(request: dict[str, Any]) -> bool:
    """Whether a chat or responses request carries an image (vision)."""
    for message in _messages(request):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") in ("image_url", "input_image"):
                    return True
    return False


def _messages(request: dict[str, Any]) -> list[Any]:
    for key in ("messages", "input"):
        value = request.get(key)
        if isinstance(value, list):
            return value
    return []


def request_text(request: dict[str, Any]) -> str:
    """The text a request sends to a model (for estimating its input tokens)."""
    parts: list[str] = []
    for key in ("prompt", "input", "instructions"):
        if isinstance(request.get(key), str):
            parts.append(request[key])
    if isinstance(request.get("input"), list) and all(isinstance(x, str) for x in request["input"]):
        parts.extend(request["input"])
    for message in _messages(request):
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return "\n".join(parts)


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / _CHARS_PER_TOKEN)


def extract_usage(
    family: str,
    request: dict[str, Any],
    response: Any,
    *,
    file_seconds: Decimal | None = None,
    output_seconds: Decimal | None = None,
) -> Usage:
    """Usage of a finished, non-streamed call.

    ``response`` is the parsed JSON body (None when it was not JSON);
    ``file_seconds`` the uploaded audio's length, ``output_seconds`` the
    returned audio's length, where the caller measured them.
    """
    reported = _response_usage(response)
    if family == "speech":
        base = reported or Usage(audio_seconds=output_seconds or Decimal(0))
        return replace(base, characters=_characters(request))
    if family == "transcription":
        return _transcription_usage(reported, response, file_seconds)
    if family == "image":
        return _image_usage(reported, request, response)
    if family == "moderation":
        return Usage()
    return reported or Usage()


def _characters(request: dict[str, Any]) -> int:
    text = request.get("input")
    return len(text) if isinstance(text, str) else 0


def _transcription_usage(reported: Usage | None, response: Any, file_seconds: Decimal | None) -> Usage:
    if reported is not None and (reported.has_tokens or reported.audio_seconds):
        return reported
    if isinstance(response, dict) and _seconds(response.get("duration")):
        return Usage(audio_seconds=_seconds(response.get("duration")))
    if file_seconds:
        return Usage(audio_seconds=file_seconds)
    return Usage(estimated=True)


def _image_usage(reported: Usage | None, request: dict[str, Any], response: Any) -> Usage:
    data = response.get("data") if isinstance(response, dict) else None
    count = len(data) if isinstance(data, list) else 0
    size = request.get("size") if isinstance(request.get("size"), str) else "1024x1024"
    quality = request.get("quality") if isinstance(request.get("quality"), str) else None
    base = reported if reported is not None and reported.has_tokens else Usage()
    return replace(base, images=count, image_size=size, image_quality=quality)


class StreamMeter:
    """Follows one SSE stream: finds its usage, hides the usage chunk the proxy
    asked for on the client's behalf, and estimates usage if the stream ends
    without any."""

    def __init__(self, family: str, request: dict[str, Any], *, hide_usage_chunk: bool) -> None:
        self._family = family
        self._request = request
        self._hide = hide_usage_chunk
        self._delivered: list[str] = []
        self.usage: Usage | None = None
        self.done = False

    def on_event(self, event: SseEvent) -> bool:
        """Take one event; True if it should be forwarded to the client."""
        if event.data == "[DONE]":
            self.done = True
            return True
        try:
            body = json.loads(event.data)
        except ValueError:
            return True
        found = _response_usage(body)
        if found is not None:
            self.usage = found
            if self._hide and body.get("choices") == []:
                return False
        self._delivered.append(_delta_text(body))
        return True

    def final_usage(self) -> Usage:
        """The reported usage, or an estimate (flagged) from what was delivered."""
        usage = self.usage or Usage(
            input_tokens=estimate_tokens(request_text(self._request)),
            output_tokens=estimate_tokens("".join(self._delivered)),
            estimated=True,
        )
        if self._family == "speech":
            return replace(usage, characters=_characters(self._request))
        return usage


def _delta_text(body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    if isinstance(body.get("delta"), str):  # responses / transcription deltas
        return str(body["delta"])
    choices = body.get("choices")
    if not isinstance(choices, list):
        return ""
    texts = []
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            texts.append(delta["content"])
        elif isinstance(choice.get("text"), str):  # legacy completions
            texts.append(choice["text"])
    return "".join(texts)
