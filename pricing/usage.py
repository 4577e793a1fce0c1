"""What one call consumed, in the units it is priced by."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

__all__ = ["Usage"]


@dataclass(frozen=True, slots=True)
class Usage:
    """Usage of one call, as read from the upstream's response (or estimated).

    ``input_tokens`` includes ``cached_tokens``, ``audio_input_tokens`` and
    ``image_input_tokens``; ``output_tokens`` includes ``reasoning_tokens`` and
    ``audio_output_tokens``, the way OpenAI reports them.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    image_input_tokens: int = 0
    characters: int = 0
    audio_seconds: Decimal = field(default_factory=lambda: Decimal(0))
    images: int = 0
    image_size: str | None = None
    image_quality: str | None = None
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        """Tokens counted against a token budget: input plus output."""
        return self.input_tokens + self.output_tokens

    @property
    def has_tokens(self) -> bool:
        return self.total_tokens > 0
