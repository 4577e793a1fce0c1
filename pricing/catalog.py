"""The price catalog: list prices in USD, model-name resolution, cost of a call.

Prices are per 1M tokens (``input``, ``cached_input``, ``output``, ``audio_input``,
``audio_output``, ``image_input``), per 1M characters (``per_million_characters``),
per minute of audio (``per_minute``) or per image (``per_image``, keyed
``"quality:size"`` or ``"size"``). All are strings in the files and ``Decimal``
here; a float never touches a price.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from taximeter.pricing.money import parse_money, quantize
from taximeter.pricing.usage import Usage

__all__ = ["Catalog", "CatalogError", "ModelPrice", "load_catalog", "problems"]

_CATALOG_API_TYPES = ("chat", "embeddings", "tts", "whisper", "image", "moderation")
_MILLION = Decimal(1_000_000)
_SIXTY = Decimal(60)
_DATE_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")
_TOKEN_PRICES = ("input", "cached_input", "output", "audio_input", "audio_output", "image_input")
_UNIT_PRICES = ("per_million_characters", "per_minute")


class CatalogError(ValueError):
    """A catalog file that cannot be used; the message names the model and field."""


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """List prices of one model, in USD."""

    model: str
    api_type: str
    input: Decimal | None = None
    cached_input: Decimal | None = None
    output: Decimal | None = None
    audio_input: Decimal | None = None
    audio_output: Decimal | None = None
    image_input: Decimal | None = None
    per_million_characters: Decimal | None = None
    per_minute: Decimal | None = None
    per_image: Mapping[str, Decimal] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The prices as JSON-ready strings (money is never a float)."""
        out: dict[str, Any] = {"model": self.model, "api_type": self.api_type}
        for name in _TOKEN_PRICES + _UNIT_PRICES:
            value = getattr(self, name)
            out[name] = None if value is None else str(value)
        out["per_image"] = {k: str(v) for k, v in self.per_image.items()}
        return out

    def cost_usd(self, usage: Usage) -> Decimal:
        """Cost of ``usage`` in USD, quantized to 1e-9.

        Tokens are priced when the usage reports any; otherwise characters,
        audio seconds or images, whichever this model has a price for.
        """
        if usage.has_tokens and (self.input is not None or self.output is not None):
            return quantize(self._token_cost(usage))
        if usage.characters and self.per_million_characters is not None:
            return quantize(usage.characters * self.per_million_characters / _MILLION)
        if usage.audio_seconds and self.per_minute is not None:
            return quantize(usage.audio_seconds * self.per_minute / _SIXTY)
        if usage.images and self.per_image:
            return quantize(usage.images * self.image_price(usage.image_quality, usage.image_size))
        return Decimal(0).quantize(Decimal("0.000000001"))

    def image_price(self, quality: str | None, size: str | None) -> Decimal:
        """Price of one image; an unlisted quality or size costs the dearest listed one,
        so a new option never meters below its price."""
        for key in (f"{quality}:{size}", f"{size}", f"{quality}"):
            if key in self.per_image:
                return self.per_image[key]
        return max(self.per_image.values())

    def _token_cost(self, usage: Usage) -> Decimal:
        base_in = self.input if self.input is not None else Decimal(0)
        base_out = self.output if self.output is not None else Decimal(0)
        text_in = max(
            usage.input_tokens - usage.cached_tokens - usage.audio_input_tokens - usage.image_input_tokens,
            0,
        )
        text_out = max(usage.output_tokens - usage.audio_output_tokens, 0)
        total = (
            text_in * base_in
            + usage.cached_tokens * _or(self.cached_input, base_in)
            + usage.audio_input_tokens * _or(self.audio_input, base_in)
            + usage.image_input_tokens * _or(self.image_input, base_in)
            + text_out * base_out
            + usage.audio_output_tokens * _or(self.audio_output, base_out)
        )
        return total / _MILLION


def _or(value: Decimal | None, default: Decimal) -> Decimal:
    return default if value is None else value


class Catalog:
    """Model prices, looked up exactly, then without a date suffix, then by the
    longest configured prefix (``gpt-4o-2024-08-06`` → ``gpt-4o``)."""

    def __init__(self, prices: Iterable[ModelPrice]) -> None:
        self._prices = {p.model: p for p in prices}
        self._by_length = sorted(self._prices, key=len, reverse=True)

    def __len__(self) -> int:
        return len(self._prices)

    def __iter__(self) -> Any:
        return iter(self._prices.values())

    def merged(self, other: Catalog) -> Catalog:
        """A catalog where ``other``'s models replace or extend this one's."""
        return Catalog([*self._prices.values(), *other._prices.values()])

    def resolve(self, model: str) -> ModelPrice | None:
        """The price entry for ``model``, or None when no rule matches."""
        if model in self._prices:
            return self._prices[model]
        undated = _DATE_SUFFIX.sub("", model)
        if undated in self._prices:
            return self._prices[undated]
        for name in self._by_length:
            if model.startswith(name):
                return self._prices[name]
        return None


_NEEDS = {
    "chat": ("input", "output"),
    "embeddings": ("input",),
    "moderation": (),
}


def problems(catalog: Catalog) -> list[str]:
    """What makes a catalog unfit to bill with: a model missing the prices
    its api_type needs. (Negative and malformed prices are refused on load.)"""
    found = []
    for price in sorted(catalog, key=lambda p: p.model):
        missing = [name for name in _NEEDS.get(price.api_type, ()) if getattr(price, name) is None]
        if price.api_type == "tts" and price.per_million_characters is None and price.output is None:
            missing.append("per_million_characters or output")
        if price.api_type == "whisper" and price.per_minute is None:
            missing.append("per_minute")
        if price.api_type == "image" and not price.per_image:
            missing.append("per_image")
        if missing:
            found.append(f"{price.model} ({price.api_type}): no {', '.join(missing)}")
    return found


def load_catalog(*paths: Path) -> Catalog:
    """The shipped catalog, with each file in ``paths`` merged over it in order.

    A ``.json`` file is read in LiteLLM's ``model_prices_and_context_window.json``
    format; anything else as taximeter TOML. Raises CatalogError.
    """
    shipped = resources.files("taximeter.pricing").joinpath("prices.toml").read_text("utf-8")
    catalog = parse_toml(shipped, source="prices.toml")
    for path in paths:
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise CatalogError(f"cannot read price catalog {path}: {exc.strerror}") from exc
        extra = parse_litellm(text, str(path)) if path.suffix == ".json" else parse_toml(text, str(path))
        catalog = catalog.merged(extra)
    return catalog


def parse_toml(text: str, source: str) -> Catalog:
    """A catalog from taximeter's TOML format (``[models."name"]`` tables)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{source}: {exc}") from exc
    models = data.get("models")
    if not isinstance(models, dict):
        raise CatalogError(f"{source}: no [models] table")
    return Catalog(_model_from_toml(name, entry, source) for name, entry in models.items())


def _model_from_toml(name: str, entry: object, source: str) -> ModelPrice:
    if not isinstance(entry, dict):
        raise CatalogError(f"{source}: models.{name} must be a table")
    known = {f.name for f in fields(ModelPrice)} - {"model"}
    unknown = set(entry) - known
    if unknown:
        raise CatalogError(f"{source}: models.{name}: unknown field {sorted(unknown)[0]!r}")
    api_type = entry.get("api_type")
    if api_type not in _CATALOG_API_TYPES:
        raise CatalogError(f"{source}: models.{name}.api_type must be one of {_CATALOG_API_TYPES}")
    values: dict[str, Any] = {}
    for key in _TOKEN_PRICES + _UNIT_PRICES:
        if key in entry:
            values[key] = _price(entry[key], f"{source}: models.{name}.{key}")
    per_image = entry.get("per_image", {})
    if not isinstance(per_image, dict):
        raise CatalogError(f"{source}: models.{name}.per_image must be a table")
    values["per_image"] = {
        k: _price(v, f"{source}: models.{name}.per_image.{k}") for k, v in per_image.items()
    }
    return ModelPrice(model=name, api_type=api_type, **values)


def _price(value: object, where: str) -> Decimal:
    if isinstance(value, float):
        # TOML floats are binary; prices must be written as strings to stay exact.
        raise CatalogError(f'{where}: write prices as strings, e.g. "2.50"')
    try:
        return parse_money(value)
    except ValueError as exc:
        raise CatalogError(f"{where}: {exc}") from exc


_LITELLM_MODES = {
    "chat": "chat",
    "completion": "chat",
    "responses": "chat",
    "embedding": "embeddings",
    "audio_speech": "tts",
    "audio_transcription": "whisper",
    "image_generation": "image",
    "moderation": "moderation",
}


def parse_litellm(text: str, source: str) -> Catalog:
    """A catalog from LiteLLM's JSON format (USD per token/character/second/image).

    Only OpenAI-priced entries with a known ``mode`` are taken; JSON numbers are
    parsed straight to Decimal.
    """
    try:
        data = json.loads(text, parse_float=Decimal, parse_int=Decimal)
    except ValueError as exc:
        raise CatalogError(f"{source}: {exc}") from exc
    if not isinstance(data, dict):
        raise CatalogError(f"{source}: expected a JSON object of models")
    prices = []
    for name, entry in data.items():
        if not isinstance(entry, dict) or entry.get("mode") not in _LITELLM_MODES:
            continue
        prices.append(_model_from_litellm(name, entry))
    return Catalog(prices)


def _model_from_litellm(name: str, entry: dict[str, Any]) -> ModelPrice:
    def per_million(key: str) -> Decimal | None:
        value = entry.get(key)
        return None if value is None else Decimal(value) * _MILLION

    per_second = entry.get("input_cost_per_second")
    per_image = entry.get("output_cost_per_image")
    return ModelPrice(
        model=name,
        api_type=_LITELLM_MODES[entry["mode"]],
        input=per_million("input_cost_per_token"),
        cached_input=per_million("cache_read_input_token_cost"),
        output=per_million("output_cost_per_token"),
        audio_input=per_million("input_cost_per_audio_token"),
        audio_output=per_million("output_cost_per_audio_token"),
        image_input=per_million("input_cost_per_image_token"),
        per_million_characters=per_million("input_cost_per_character"),
        per_minute=None if per_second is None else Decimal(per_second) * _SIXTY,
        per_image={} if per_image is None else {"default": Decimal(per_image)},
    )
