"""What one call consumed, in the units it is priced by."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

__all__ = ["Family", "ToolImage", "Usage"]

# How a call's usage is read, by the kind of endpoint it went to.
Family = Literal[
    "chat",
    "completions",
    "responses",
    "embeddings",
    "speech",
    "transcription",
    "image",
    "moderation",
    "models",
    "passthrough",
]


@dataclass(frozen=True, slots=True)
class ToolImage:
    """One image the Responses API's ``image_generation`` tool made: priced
    per image at its image model's rates, not at the calling model's."""

    model: str
    quality: str | None = None
    size: str | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """Usage of one call, as read from the upstream's response (or estimated).

    ``input_tokens`` includes ``cached_tokens``, ``cache_write_tokens``,
    ``audio_input_tokens`` and ``image_input_tokens`` (and ``cached_tokens``
    its audio and image parts); ``output_tokens`` includes
    ``reasoning_tokens``, ``audio_output_tokens`` and ``image_output_tokens``,
    the way OpenAI reports them. ``service_tier`` is the tier the response
    says served the call; ``tool_calls`` counts built-in tool calls by tool.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    image_input_tokens: int = 0
    cached_audio_tokens: int = 0
    cached_image_tokens: int = 0
    cache_write_tokens: int = 0
    image_output_tokens: int = 0
    characters: int = 0
    audio_seconds: Decimal = field(default_factory=lambda: Decimal(0))
    images: int = 0
    image_size: str | None = None
    image_quality: str | None = None
    service_tier: str | None = None
    tool_calls: Mapping[str, int] = field(default_factory=dict)
    tool_images: tuple[ToolImage, ...] = ()  # images made by the image_generation tool
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        """Tokens counted against a token budget: input plus output."""
        return self.input_tokens + self.output_tokens

    @property
    def has_tokens(self) -> bool:
        return self.total_tokens > 0
