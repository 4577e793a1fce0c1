"""Usage of a streamed call, read as its SSE messages go by."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import orjson

from taximeter.pricing.extract import characters_of, estimate_tokens, reported_usage, request_text, tokens_of
from taximeter.pricing.sse import SseMessage
from taximeter.pricing.usage import Family, Usage

__all__ = ["StreamUsage"]

_RESPONSES_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_CHAT_DELTA_TEXT = ("content", "reasoning_content", "reasoning", "refusal")


class StreamUsage:
    """Follows one SSE stream: finds its usage, tells when the stream's
    terminal usage went by, hides the usage chunk the proxy asked for on the
    client's behalf, and estimates usage if the stream ends without it.

    ``usage`` is the latest usage seen (cumulative in vLLM-style streams that
    report it in every chunk; flagged ``estimated`` when it was invalid).
    """

    def __init__(self, family: Family, request: dict[str, Any], *, hide_usage_chunk: bool) -> None:
        self._family = family
        self._request = request
        self._hide = hide_usage_chunk
        self._delivered_chars = 0  # a count, not the text: a long stream must not grow memory
        self._valid: Usage | None = None
        self._finished = False
        self.usage: Usage | None = None
        self.object_id: str | None = None  # the id of the response or completion streamed
        self._final: dict[str, Any] | None = None  # a Responses stream's terminal response
        self._audio_id: str | None = None  # a chat stream's audio reply
        self.done = False  # the ``data: [DONE]`` event went by

    @property
    def finished(self) -> bool:
        """True from the stream's terminal usage on: a chat or completions chunk
        with usage and no choices, a Responses API ``response.completed``,
        ``.incomplete`` or ``.failed`` event, or ``data: [DONE]``."""
        return self._finished

    def on_message(self, message: SseMessage) -> bool:
        """Take one SSE message; True if it should be forwarded to the client."""
        if message.data.strip() == "[DONE]":
            self.done = self._finished = True
            return True
        body = _json(message.data)
        if not isinstance(body, dict):
            return True  # not a JSON object: forwarded, not read
        if self.object_id is None:
            self.object_id = _object_id(body)
        found = reported_usage(body)
        if found is not None:
            self.usage = found
            if not found.estimated:
                self._valid = found
        if self._is_terminal(body, message, found):
            self._finished = True
            if isinstance(body.get("response"), dict):
                self._final = body["response"]
        if self._audio_id is None and self._family == "chat":
            self._audio_id = _audio_id(body)
        if found is not None and self._hide and body.get("choices") == []:
            return False
        self._delivered_chars += len(_delta_text(body))
        return True

    def made(self) -> dict[str, Any]:
        """What the stream made, shaped as its non-streamed reply would be
        where it names stored objects: the terminal response (with its output
        items), or the completion's id and audio reply."""
        if self._final is not None:
            return self._final
        made: dict[str, Any] = {"id": self.object_id}
        if self._audio_id is not None:
            made["choices"] = [{"message": {"audio": {"id": self._audio_id}}}]
        return made

    def final_usage(self) -> Usage:
        """The terminal usage when the stream finished with a valid one;
        otherwise a lower bound flagged ``estimated``: the latest valid usage
        or the estimate from the request and the text delivered, whichever
        has more output tokens."""
        if self._finished and self.usage is not None and not self.usage.estimated:
            usage = self.usage
        else:
            usage = self._lower_bound()
        if self._family == "speech":
            return replace(usage, characters=characters_of(self._request))
        return usage

    def _lower_bound(self) -> Usage:
        delivered = Usage(
            input_tokens=estimate_tokens(request_text(self._request)),
            output_tokens=tokens_of(self._delivered_chars),
            estimated=True,
        )
        if self._valid is None or delivered.output_tokens > self._valid.output_tokens:
            return delivered
        return replace(self._valid, estimated=True)

    def _is_terminal(self, body: dict[str, Any], event: SseMessage, found: Usage | None) -> bool:
        if self._family == "responses":
            kind = body.get("type")
            return (kind if isinstance(kind, str) else event.event) in _RESPONSES_TERMINAL
        choices = body.get("choices")
        return found is not None and (choices is None or choices == [])


def _object_id(body: dict[str, Any]) -> str | None:
    """The id of what a stream streams: a chat chunk's own, or the response
    a Responses API event carries."""
    response = body.get("response")
    found = response.get("id") if isinstance(response, dict) else body.get("id")
    return found if isinstance(found, str) else None


def _audio_id(body: dict[str, Any]) -> str | None:
    choices = body.get("choices")
    for choice in choices if isinstance(choices, list) else []:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        audio = delta.get("audio") if isinstance(delta, dict) else None
        if isinstance(audio, dict) and isinstance(audio.get("id"), str):
            return str(audio["id"])
    return None


def _json(data: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _delta_text(body: dict[str, Any]) -> str:
    delta = body.get("delta")
    if isinstance(delta, str):  # Responses API text, reasoning and arguments; transcription deltas
        kind = body.get("type")
        return "" if isinstance(kind, str) and kind.endswith("audio.delta") else delta  # base64, not text
    choices = body.get("choices")
    if not isinstance(choices, list):
        return ""
    texts: list[str] = []
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict):
            texts.extend(_chat_delta_texts(delta))
        elif isinstance(choice.get("text"), str):  # legacy completions
            texts.append(choice["text"])
    return "".join(texts)


def _chat_delta_texts(delta: dict[str, Any]) -> Iterator[str]:
    for key in _CHAT_DELTA_TEXT:
        if isinstance(delta.get(key), str):
            yield delta[key]
    calls = delta.get("tool_calls")
    functions = [c.get("function") for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []
    functions.append(delta.get("function_call"))  # the legacy single call
    for function in functions:
        if isinstance(function, dict):
            yield from (v for k in ("name", "arguments") if isinstance(v := function.get(k), str))
