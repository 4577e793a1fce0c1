"""Usage extraction: what a call consumed, read from its request and response.

Pure functions over parsed JSON (and counts the caller measured); no I/O. One
usage parser reads every shape OpenAI reports: ``prompt_tokens`` /
``completion_tokens`` (chat, embeddings), ``input_tokens`` / ``output_tokens``
(responses, images, speech, token-priced transcription) with their
``*_details``, and ``{"type": "duration", "seconds": …}`` (whisper).

The upstream's numbers are untrusted input: a usage object is either valid
(every count an int in ``[0, MAX_TOKENS]``, details within their totals,
seconds a finite number in ``[0, MAX_AUDIO_SECONDS]``) or it is not, and one
that is not never reads as zero: it reads as usage missing, flagged
``estimated`` so the caller charges at least its reservation.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from decimal import Decimal
from typing import Any

from taximeter.pricing.usage import Family, ToolImage, Usage

__all__ = [
    "MAX_AUDIO_SECONDS",
    "MAX_TOKENS",
    "characters_of",
    "estimate_tokens",
    "extract_usage",
    "has_image_part",
    "parse_usage",
    "reported_usage",
    "request_text",
    "service_tier",
    "tokens_of",
    "tool_calls",
    "tool_images",
]

# Per count, per call: 100x the largest context window sold today, far below
# where a count times a price could overflow a ledger column.
MAX_TOKENS = 100_000_000
MAX_AUDIO_SECONDS = Decimal(86_400 * 7)  # a week of audio in one call

_CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb for English text; used only to estimate
_TOKEN_FAMILIES = frozenset({"chat", "completions", "responses", "embeddings"})
_INPUT_DETAILS = ("prompt_tokens_details", "input_tokens_details", "input_token_details")
_OUTPUT_DETAILS = ("completion_tokens_details", "output_tokens_details", "output_token_details")
# The image model of the image_generation tool when the response names none
# (API reference, Responses "tools" → image_generation.model, default gpt-image-1).
IMAGE_TOOL_MODEL = "gpt-image-1"
_OPTION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_SERVICE_TIERS = frozenset({"default", "auto", "flex", "priority", "scale", "batch"})
# Output items of the Responses API that are built-in tool calls, and the tool each one is.
_TOOL_CALLS = {
    "web_search_call": "web_search",
    "file_search_call": "file_search",
    "code_interpreter_call": "code_interpreter",
    "image_generation_call": "image_generation",
    "computer_call": "computer_use",
}


class _Invalid(Exception):
    """A usage object that cannot be trusted; raised and caught in this module."""


def _count(obj: dict[str, Any], key: str) -> int | None:
    """The count at ``key``: None when absent or null, _Invalid when not a sane int."""
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is not int or not 0 <= value <= MAX_TOKENS:  # type(): no bools, no int subclasses
        raise _Invalid(key)
    return value


def _seconds(value: Any) -> Decimal | None:
    """Seconds from a JSON number in ``[0, MAX_AUDIO_SECONDS]``, else None."""
    if type(value) is int:
        seconds = Decimal(value) if 0 <= value <= MAX_AUDIO_SECONDS else None
    elif type(value) is float and math.isfinite(value):
        seconds = Decimal(repr(value))  # repr: 8.47 reads as 8.47, not its binary expansion
    else:
        return None
    if seconds is None or not 0 <= seconds <= MAX_AUDIO_SECONDS:
        return None
    return seconds.copy_abs()  # -0.0 is zero


def parse_usage(usage: Any) -> Usage | None:
    """A Usage from any OpenAI ``usage`` object, or None if there is none.

    A usage object that is present but invalid (see the module docstring, or
    one with no input or output count at all) gives zero counts flagged
    ``estimated``: the caller must not read it as a free call.
    """
    if not isinstance(usage, dict):
        return None
    try:
        if usage.get("type") == "duration":
            seconds = _seconds(usage.get("seconds"))
            if seconds is None:
                raise _Invalid("seconds")
            return Usage(audio_seconds=seconds)
        return _token_usage(usage)
    except _Invalid:
        return Usage(estimated=True)


def _token_usage(usage: dict[str, Any]) -> Usage:
    input_tokens = _total(usage, "prompt_tokens", "input_tokens")
    output_tokens = _total(usage, "completion_tokens", "output_tokens")
    if input_tokens is None and output_tokens is None:
        raise _Invalid("no token counts")
    in_details = _details(usage, _INPUT_DETAILS)
    out_details = _details(usage, _OUTPUT_DETAILS)
    cached_details = _details(in_details, ("cached_tokens_details",))
    cache_read = _count(usage, "cache_read_input_tokens")
    cache_write = _count(usage, "cache_creation_input_tokens")
    if _count(usage, "prompt_tokens") is None and not in_details and (cache_read or cache_write):
        # Anthropic's own shape (some gateways pass it on): its input_tokens leave out the cache.
        input_tokens = (input_tokens or 0) + (cache_read or 0) + (cache_write or 0)
    parsed = Usage(
        input_tokens=input_tokens or 0,
        output_tokens=output_tokens or 0,
        cached_tokens=_count(in_details, "cached_tokens") or cache_read or 0,
        audio_input_tokens=_count(in_details, "audio_tokens") or 0,
        image_input_tokens=_count(in_details, "image_tokens") or 0,
        cached_audio_tokens=_count(cached_details, "audio_tokens") or 0,
        cached_image_tokens=_count(cached_details, "image_tokens") or 0,
        cache_write_tokens=_count(in_details, "cache_write_tokens") or cache_write or 0,
        reasoning_tokens=_count(out_details, "reasoning_tokens") or 0,
        audio_output_tokens=_count(out_details, "audio_tokens") or 0,
        image_output_tokens=_count(out_details, "image_tokens") or 0,
    )
    _check_parts(parsed)
    return parsed


def _check_parts(u: Usage) -> None:
    """Pricing reads the details as parts of their totals; parts larger than
    the whole would price a negative remainder."""
    cached_media = u.cached_audio_tokens + u.cached_image_tokens
    if cached_media > u.cached_tokens:
        raise _Invalid("cached audio and image tokens exceed cached tokens")
    if u.cached_audio_tokens > u.audio_input_tokens or u.cached_image_tokens > u.image_input_tokens:
        raise _Invalid("cached audio or image tokens exceed their totals")
    parts = u.cached_tokens + u.cache_write_tokens + u.audio_input_tokens + u.image_input_tokens
    if parts - cached_media > u.input_tokens:
        raise _Invalid("input details exceed input tokens")
    if u.reasoning_tokens + u.audio_output_tokens + u.image_output_tokens > u.output_tokens:
        raise _Invalid("output details exceed output tokens")


def _total(usage: dict[str, Any], *keys: str) -> int | None:
    # Either name may be used; where an upstream sends both, the larger is the safe reading.
    counts = [count for key in keys if (count := _count(usage, key)) is not None]
    return max(counts) if counts else None


def _details(usage: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The first non-empty details object among ``keys``; _Invalid if one is not an object."""
    found: dict[str, Any] = {}
    for key in keys:
        value = usage.get(key)
        if value is not None and not isinstance(value, dict):
            raise _Invalid(key)
        if value and not found:
            found = value
    return found


def reported_usage(body: Any) -> Usage | None:
    """Usage at ``body.usage`` or ``body.response.usage`` (Responses API events),
    as :func:`parse_usage` reads it, with the ``service_tier`` and built-in
    tool calls the same object reports; None when the body reports none."""
    if not isinstance(body, dict):
        return None
    holder = body
    found = parse_usage(body.get("usage"))
    if found is None and isinstance(body.get("response"), dict):
        holder = body["response"]
        found = parse_usage(holder.get("usage"))
    if found is None:
        return None
    return replace(
        found,
        service_tier=service_tier(holder),
        tool_calls=tool_calls(holder),
        tool_images=tool_images(holder),
    )


def service_tier(body: dict[str, Any]) -> str | None:
    """The tier a response says served it, if it names one taximeter knows
    (anything else is recorded as ``unknown``, and priced as standard)."""
    tier = body.get("service_tier")
    if tier is None:
        return None
    return tier if tier in _SERVICE_TIERS else "unknown"


def tool_calls(body: dict[str, Any]) -> dict[str, int]:
    """Built-in tool calls among a Responses API ``output``, counted by tool."""
    output = body.get("output")
    counts: dict[str, int] = {}
    if isinstance(output, list):
        search = _search_tool(body.get("tools"))
        for item in output:
            kind = item.get("type") if isinstance(item, dict) else None
            tool = _TOOL_CALLS.get(kind) if isinstance(kind, str) else None
            if tool == "web_search":
                tool = search
            if tool is not None:
                counts[tool] = counts.get(tool, 0) + 1
    return counts


def _search_tool(tools: Any) -> str:
    """Which web search tool a response's searches are: ``web_search_preview``
    (its own price on some models) when the response's tools echo only that
    version, else ``web_search``."""
    kinds = [t.get("type") for t in tools if isinstance(t, dict)] if isinstance(tools, list) else []
    names = [k for k in kinds if isinstance(k, str) and k.startswith("web_search")]
    only_preview = bool(names) and all(k.startswith("web_search_preview") for k in names)
    return "web_search_preview" if only_preview else "web_search"


def tool_images(body: dict[str, Any]) -> tuple[ToolImage, ...]:
    """The images the ``image_generation`` tool made among a Responses API
    ``output``: each with the image model, quality and size the response
    says (the item's own, else the tool's as the response echoes it)."""
    output = body.get("output")
    if not isinstance(output, list):
        return ()
    tools = body.get("tools")
    config = (
        next(
            (t for t in tools if isinstance(t, dict) and t.get("type") == "image_generation"),
            {},
        )
        if isinstance(tools, list)
        else {}
    )
    model = _option(config.get("model")) or IMAGE_TOOL_MODEL
    return tuple(
        ToolImage(
            model,
            quality=_option(item.get("quality")) or _option(config.get("quality")),
            size=_option(item.get("size")) or _option(config.get("size")),
        )
        for item in output
        if isinstance(item, dict) and item.get("type") == "image_generation_call"
    )


def _option(value: Any) -> str | None:
    """A short name from a response (a model, a quality, a size), or None."""
    return value if isinstance(value, str) and _OPTION.fullmatch(value) else None


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
    return tokens_of(len(text))


def tokens_of(characters: int) -> int:
    return math.ceil(characters / _CHARS_PER_TOKEN)


def extract_usage(
    family: Family,
    request: dict[str, Any],
    response: Any,
    *,
    file_seconds: Decimal | None = None,
    output_seconds: Decimal | None = None,
    token_priced: bool = False,
) -> Usage:
    """Usage of a finished, non-streamed call.

    ``response`` is the parsed JSON body (None when it was not JSON);
    ``file_seconds`` the uploaded audio's length, ``output_seconds`` the
    returned audio's length, where the caller measured them; ``token_priced``
    says a speech model is priced by tokens or audio length, not characters.

    The result is flagged ``estimated`` (zero counts: the caller charges its
    reservation) when a family that reports usage (chat, completions,
    responses, embeddings) reports none or an invalid one; for speech, when
    nothing priced it (no valid tokens, and no output seconds for a
    token-priced model or no characters otherwise); for transcription, when
    neither usage, ``duration`` nor ``file_seconds`` tells its length; for
    images, when the usage is invalid or there is neither token usage nor a
    ``data`` list. Moderation is free.
    """
    reported = reported_usage(response)
    valid = reported if reported is not None and not reported.estimated else None
    if family == "speech":
        return _speech_usage(valid, request, output_seconds, token_priced=token_priced)
    if family == "transcription":
        return _transcription_usage(valid, response, file_seconds)
    if family == "image":
        return _image_usage(reported, request, response)
    if family == "moderation":
        return Usage()
    if valid is not None:
        return valid
    return Usage(estimated=family in _TOKEN_FAMILIES or reported is not None)


def characters_of(request: dict[str, Any]) -> int:
    text = request.get("input")
    return len(text) if isinstance(text, str) else 0


def _speech_usage(
    valid: Usage | None, request: dict[str, Any], output_seconds: Decimal | None, *, token_priced: bool
) -> Usage:
    characters = characters_of(request)
    if valid is not None and (valid.has_tokens or valid.audio_seconds):
        return replace(valid, characters=characters)
    seconds = output_seconds if output_seconds is not None and output_seconds > 0 else Decimal(0)
    priced = seconds > 0 if token_priced else characters > 0
    return Usage(characters=characters, audio_seconds=seconds, estimated=not priced)


def _transcription_usage(valid: Usage | None, response: Any, file_seconds: Decimal | None) -> Usage:
    if valid is not None and (valid.has_tokens or valid.audio_seconds):
        return valid
    duration = _seconds(response.get("duration")) if isinstance(response, dict) else None
    if duration:
        return Usage(audio_seconds=duration)
    if file_seconds is not None and file_seconds > 0:
        return Usage(audio_seconds=file_seconds)
    return Usage(estimated=True)


def _image_usage(reported: Usage | None, request: dict[str, Any], response: Any) -> Usage:
    data = response.get("data") if isinstance(response, dict) else None
    count = len(data) if isinstance(data, list) else 0
    said = response if isinstance(response, dict) else {}  # gpt-image models report what they made
    size = _option(said.get("size")) or _option(request.get("size")) or "1024x1024"
    quality = _option(said.get("quality")) or _option(request.get("quality"))
    invalid = reported is not None and reported.estimated
    tokens = reported is not None and not invalid and reported.has_tokens
    base = reported if reported is not None and tokens else Usage()
    estimated = invalid or (not tokens and not isinstance(data, list))
    return replace(base, images=count, image_size=size, image_quality=quality, estimated=estimated)
