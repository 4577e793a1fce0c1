"""Client-controlled values of a proxied call, validated where they enter (pure).

Whatever a client sends may end up in a log line, a metric label, a CSV cell
or a database row, so each value that taximeter keeps is checked once, here:
bounded in length, free of control characters and lone surrogates. A bad
value is refused with the field named; it is never repaired silently.
"""

from __future__ import annotations

from typing import Any

from taximeter.pricing.terms import CONTROL
from taximeter.pricing.usage import Family
from taximeter.proxy.errors import InvalidInput

__all__ = ["MAX_LABEL_CHARS", "label", "refuse_unmetered_options"]

MAX_LABEL_CHARS = 256  # OpenAI's own bound on `user`; model ids are far shorter


def label(value: Any, param: str, *, required: bool = False) -> str | None:
    """A model name, end user or conversation id as it may be kept, or raise
    InvalidInput (400) naming ``param``. None when absent and not required."""
    if value is None or value == "":
        if required:
            raise InvalidInput(f"'{param}' is required", param=param, status=400)
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"'{param}' must be a string", param=param, status=400)
    if len(value) > MAX_LABEL_CHARS:
        raise InvalidInput(f"'{param}' is longer than {MAX_LABEL_CHARS} characters", param=param, status=400)
    if CONTROL.search(value) or not _encodable(value):
        raise InvalidInput(f"'{param}' holds control or invalid characters", param=param, status=400)
    return value


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, from a header that was not UTF-8
        return False
    return True


def refuse_unmetered_options(family: Family, fields: dict[str, Any], *, form: bool = False) -> None:
    """Refuse request options whose spend taximeter could not read back.

    ``stream`` must be a JSON boolean (in a multipart ``form``, where every
    field is text, ``true`` or ``false``): an upstream that takes ``"true"``
    in JSON would stream without the usage chunk taximeter asks for. A
    background response is metered by a watcher once it has run, so it is
    created without streaming (and may be streamed by its retrieval).
    """
    stream = fields.get("stream")
    valid = stream in ("true", "false") if form else isinstance(stream, bool)
    if stream is not None and not valid:
        raise InvalidInput("'stream' must be true or false", param="stream", status=400)
    options = fields.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidInput("'stream_options' must be an object", param="stream_options", status=400)
    background = fields.get("background")
    if family == "responses" and background is not None and not isinstance(background, bool):
        raise InvalidInput("'background' must be true or false", param="background", status=400)
    if family == "responses" and background is True and stream is True:
        raise InvalidInput(
            "a streamed background response cannot be metered by taximeter; create it without "
            "'stream' and stream it with GET /v1/responses/{id}?stream=true",
            param="stream",
            status=400,
        )
