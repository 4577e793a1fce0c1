"""Length of audio held in memory, read by mutagen (no hand-written parsers)."""

from __future__ import annotations

import io
from decimal import Decimal

import mutagen
from mutagen import MutagenError

__all__ = ["audio_seconds"]

_PCM_BYTES_PER_SECOND = 24_000 * 2  # OpenAI's raw pcm: 24 kHz, 16-bit, mono


def audio_seconds(data: bytes, *, filename: str = "", response_format: str | None = None) -> Decimal | None:
    """Seconds of audio in ``data``, to the millisecond, or None if unknown."""
    if response_format == "pcm":
        return Decimal(len(data)) / _PCM_BYTES_PER_SECOND
    buffer = io.BytesIO(data)
    buffer.name = filename  # mutagen weighs the extension when sniffing the format
    try:
        parsed = mutagen.File(buffer)
    except (MutagenError, OSError, ValueError):
        return None
    length = getattr(getattr(parsed, "info", None), "length", None)
    if not isinstance(length, (int, float)) or length <= 0:
        return None
    return Decimal(str(round(length, 3)))
