"""What a model costs: its rates, and the cost of a call's usage at them.

Token rates are USD per 1M tokens by kind (text, cached read, cache write,
audio and image in and out), one set per service tier (``standard``, and
``flex``, ``priority``, ``scale``, ``batch`` where the model is sold so); a
long-context set replaces them for the whole call when its prompt passes
the model's threshold. Then USD per 1M characters (speech), per minute of
audio, per image (by quality and size, with the API's defaults), and per
call of a built-in tool. All are ``Decimal``; a float never touches a price.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from taximeter.pricing.money import quantize
from taximeter.pricing.usage import Usage

__all__ = ["STANDARD", "TIERS", "TOKEN_RATES", "LongContext", "ModelPrice", "Rates"]

STANDARD = "standard"
TIERS = ("flex", "priority", "scale", "batch")
# What a response may report for the standard tier.
_STANDARD_NAMES = frozenset({STANDARD, "default", "auto"})
TOKEN_RATES = (
    "input",
    "cached_input",
    "cache_write",
    "output",
    "audio_input",
    "cached_audio_input",
    "audio_output",
    "image_input",
    "cached_image_input",
    "image_output",
)
_MILLION = Decimal(1_000_000)
_SIXTY = Decimal(60)


@dataclass(frozen=True, slots=True)
class Rates:
    """Token rates of one tier, USD per 1M. A kind without its own rate is
    priced at its family's (cached and audio input at ``input``, image and
    audio output at ``output``): never free because a rate is missing."""

    input: Decimal | None = None
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    output: Decimal | None = None
    audio_input: Decimal | None = None
    cached_audio_input: Decimal | None = None
    audio_output: Decimal | None = None
    image_input: Decimal | None = None
    cached_image_input: Decimal | None = None
    image_output: Decimal | None = None

    @property
    def empty(self) -> bool:
        return all(getattr(self, name) is None for name in TOKEN_RATES)

    def over(self, base: Rates) -> Rates:
        """These rates, with ``base``'s where these have none."""
        return Rates(**{n: _first(getattr(self, n), getattr(base, n)) for n in TOKEN_RATES})

    def scaled(self, input_factor: Decimal, output_factor: Decimal) -> Rates:
        """Every input rate times ``input_factor``, every output rate times ``output_factor``."""
        values = {}
        for name in TOKEN_RATES:
            value = getattr(self, name)
            factor = output_factor if name.endswith("output") else input_factor
            values[name] = None if value is None else value * factor
        return Rates(**values)

    def cost(self, usage: Usage) -> Decimal:
        """USD of ``usage``'s tokens at these rates (unquantized)."""
        base_in = _first(self.input, Decimal(0))
        base_out = _first(self.output, Decimal(0))
        audio_in = _first(self.audio_input, base_in)
        image_in = _first(self.image_input, base_in)
        cached_text = usage.cached_tokens - usage.cached_audio_tokens - usage.cached_image_tokens
        text_in = (
            usage.input_tokens
            - usage.cached_tokens
            - usage.cache_write_tokens
            - (usage.audio_input_tokens - usage.cached_audio_tokens)
            - (usage.image_input_tokens - usage.cached_image_tokens)
        )
        text_out = usage.output_tokens - usage.audio_output_tokens - usage.image_output_tokens
        total = (
            max(text_in, 0) * base_in
            + max(cached_text, 0) * _first(self.cached_input, base_in)
            + usage.cache_write_tokens * _first(self.cache_write, base_in)
            + (usage.audio_input_tokens - usage.cached_audio_tokens) * audio_in
            + usage.cached_audio_tokens * _first(self.cached_audio_input, audio_in)
            + (usage.image_input_tokens - usage.cached_image_tokens) * image_in
            + usage.cached_image_tokens * _first(self.cached_image_input, image_in)
            + max(text_out, 0) * base_out
            + usage.audio_output_tokens * _first(self.audio_output, base_out)
            + usage.image_output_tokens * _first(self.image_output, base_out)
        )
        return total / _MILLION

    def as_json(self) -> dict[str, str | None]:
        return {name: _text(getattr(self, name)) for name in TOKEN_RATES}


@dataclass(frozen=True, slots=True)
class LongContext:
    """Rates for the whole call when its prompt has more than ``above`` input
    tokens: one set per tier that has them (``standard`` included)."""

    above: int
    rates: Mapping[str, Rates]


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Everything one catalog says a model costs, in USD, and where it said it."""

    model: str
    api_type: str
    rates: Rates = field(default_factory=Rates)  # the standard tier
    tiers: Mapping[str, Rates] = field(default_factory=dict)  # complete sets, standard filled in
    long_context: LongContext | None = None
    per_million_characters: Decimal | None = None
    per_minute: Decimal | None = None
    per_image: Mapping[str, Decimal] = field(default_factory=dict)  # "quality:size" or "size"
    image_defaults: tuple[str | None, str | None] = (None, None)  # quality, size the API takes
    tool_fees: Mapping[str, Decimal] = field(default_factory=dict)  # USD per call, by tool
    regional_uplift: Decimal | None = None  # added on a regional-processing endpoint (0.10: +10%)
    aliases: tuple[str, ...] = ()
    provider: str = "openai"  # whose price it is: an upstream is priced from its provider's
    source: str = ""  # the catalog that priced it
    checked: date | None = None
    shutdown: date | None = None

    def rates_for(self, usage: Usage) -> tuple[str, Rates]:
        """The tier ``usage`` is priced at, and its rates (long context applied)."""
        reported = usage.service_tier
        tier = reported if reported is not None and reported in self.tiers else STANDARD
        rates = self.tiers.get(tier, self.rates)
        context = self.long_context
        if context is not None and usage.input_tokens > context.above and tier in context.rates:
            rates = context.rates[tier]
        return tier, rates

    def cost_usd(self, usage: Usage, *, regional: bool = False) -> Decimal:
        """Cost of ``usage`` in USD, quantized to 1e-9.

        Tokens are priced when the usage reports any; otherwise characters,
        audio seconds or images, whichever this model has a price for. On a
        regional-processing upstream (``regional``) that carries the model's
        uplift. Tool calls are added at their fees.
        """
        units = self._unit_cost(usage)
        if regional and self.regional_uplift is not None:
            units *= 1 + self.regional_uplift
        return quantize(units + self.tool_cost(usage))

    def tool_cost(self, usage: Usage) -> Decimal:
        total = Decimal(0)
        for tool, calls in usage.tool_calls.items():
            fee = self.fee(tool)
            if fee is not None:
                total += fee * calls
        return total

    def fee(self, tool: str) -> Decimal | None:
        """USD per call of ``tool``: its own fee, else the fee of the tool it is
        a version of (``web_search_preview`` costs ``web_search``'s unless the
        model lists its own)."""
        fee = self.tool_fees.get(tool)
        if fee is None and tool in _TOOL_VERSION_OF:
            fee = self.tool_fees.get(_TOOL_VERSION_OF[tool])
        return fee

    def _unit_cost(self, usage: Usage) -> Decimal:
        if usage.has_tokens and not self.rates.empty:
            return self.rates_for(usage)[1].cost(usage)
        if usage.characters and self.per_million_characters is not None:
            return usage.characters * self.per_million_characters / _MILLION
        if usage.audio_seconds and self.per_minute is not None:
            return usage.audio_seconds * self.per_minute / _SIXTY
        if usage.images and self.per_image:
            return usage.images * self.image_price(usage.image_quality, usage.image_size)
        return Decimal(0)

    def image_price(self, quality: str | None, size: str | None) -> Decimal:
        """Price of one image. A missing quality or size is the API's default
        for this model; an option the catalog does not list costs the dearest
        listed one, so a new option never meters below its price."""
        quality = quality if quality not in (None, "auto") else self.image_defaults[0]
        size = size if size not in (None, "auto") else self.image_defaults[1]
        for key in (f"{quality}:{size}", f"{size}", f"{quality}"):
            if key in self.per_image:
                return self.per_image[key]
        return max(self.per_image.values())

    def unmet_tier(self, usage: Usage) -> str | None:
        """A tier the response reported that this catalog has no rates for
        (charged at standard rates)."""
        tier = usage.service_tier
        if tier is None or tier in _STANDARD_NAMES or tier in self.tiers:
            return None
        return tier

    def as_json(self) -> dict[str, Any]:
        """Every rate as a JSON-ready string (money is never a float)."""
        context = self.long_context
        return {
            "model": self.model,
            "api_type": self.api_type,
            **self.rates.as_json(),
            "tiers": {name: rates.as_json() for name, rates in self.tiers.items()},
            "long_context": None
            if context is None
            else {"above": context.above, "rates": {t: r.as_json() for t, r in context.rates.items()}},
            "per_million_characters": _text(self.per_million_characters),
            "per_minute": _text(self.per_minute),
            "per_image": {k: str(v) for k, v in self.per_image.items()},
            "tool_fees": {k: str(v) for k, v in self.tool_fees.items()},
            "regional_uplift": _text(self.regional_uplift),
            "aliases": list(self.aliases),
            "provider": self.provider,
            "source": self.source,
            "checked": None if self.checked is None else self.checked.isoformat(),
            "shutdown": None if self.shutdown is None else self.shutdown.isoformat(),
        }


# A tool that is an earlier version of another, priced as it unless a model says otherwise.
_TOOL_VERSION_OF = {"web_search_preview": "web_search"}


def _first(value: Decimal | None, default: Decimal) -> Decimal:
    return default if value is None else value


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)
