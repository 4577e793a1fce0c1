"""Reading price catalog files: taximeter TOML and LiteLLM's JSON.

A field a file carries is either read or refused by name: a catalog that
says more than taximeter understands never loads as a cheaper one.

TOML, per model (prices are strings: a TOML float is binary)::

    [models."gpt-5.5"]
    api_type = "chat"
    input = "5.00"                 # USD per 1M tokens: any of rates.TOKEN_RATES
    cached_input = "0.50"
    output = "30.00"
    aliases = ["gpt-5.5-latest"]   # other names of the same model
    checked = 2026-11-25           # when the prices were checked against the source
    shutdown = 2027-06-01          # when the upstream stops serving it
    tool_fees = { web_search = "0.01" }            # USD per call
    [models."gpt-5.5".tiers.flex]                  # flex, priority, scale, batch
    input = "2.50"
    [models."gpt-5.5".long_context]                # the whole call, past `above` input tokens
    above = 272000
    input_factor = "2"             # times the input rates of every tier it applies to
    output_factor = "1.5"
    tiers = ["standard", "flex", "batch"]

plus ``per_million_characters``, ``per_minute``, ``per_image`` (a table keyed
``"quality:size"`` or ``"size"``) and ``image_defaults = ["standard",
"1024x1024"]``. A top-level ``[tool_fees]`` table applies to every chat model
of the file; a model's own ``tool_fees`` add to it or override it, tool by tool.
"""

from __future__ import annotations

import json
import re
import tomllib
from datetime import date
from decimal import Decimal
from typing import Any

from taximeter.pricing.money import parse_money
from taximeter.pricing.rates import STANDARD, TIERS, TOKEN_RATES, LongContext, ModelPrice, Rates

__all__ = ["API_TYPES", "CatalogError", "parse_litellm", "parse_toml"]

API_TYPES = ("chat", "embeddings", "tts", "whisper", "image", "moderation", "storage")
_MILLION = Decimal(1_000_000)
_SIXTY = Decimal(60)
_UNIT_PRICES = ("per_million_characters", "per_minute")
_MODEL_KEYS = frozenset(
    {
        "api_type",
        *TOKEN_RATES,
        *_UNIT_PRICES,
        "per_image",
        "image_defaults",
        "tiers",
        "long_context",
        "tool_fees",
        "aliases",
        "checked",
        "shutdown",
        "provider",
        "regional_uplift",
    }
)


class CatalogError(ValueError):
    """A catalog file that cannot be used; the message names the model and field."""


def parse_toml(text: str, source: str) -> list[ModelPrice]:
    """The models of a taximeter TOML catalog (``[models."name"]`` tables)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{source}: {exc}") from exc
    unknown = set(data) - {"models", "tool_fees"}
    if unknown:
        raise CatalogError(f"{source}: unknown table {sorted(unknown)[0]!r}")
    models = data.get("models")
    if not isinstance(models, dict):
        raise CatalogError(f"{source}: no [models] table")
    default_fees = _prices_table(data.get("tool_fees", {}), f"{source}: tool_fees")
    return [_model(name, entry, source, default_fees) for name, entry in models.items()]


def _model(name: str, entry: object, source: str, default_fees: dict[str, Decimal]) -> ModelPrice:
    where = f"{source}: models.{name}"
    if not isinstance(entry, dict):
        raise CatalogError(f"{where} must be a table")
    unknown = set(entry) - _MODEL_KEYS
    if unknown:
        raise CatalogError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    api_type = entry.get("api_type")
    if api_type not in API_TYPES:
        raise CatalogError(f"{where}.api_type must be one of {API_TYPES}")
    standard = _rates(entry, where)
    tiers = {STANDARD: standard} | _tiers(entry.get("tiers", {}), standard, where)
    own = _prices_table(entry.get("tool_fees", {}), f"{where}.tool_fees")
    tool_fees = _chat_only(api_type, default_fees) | own
    return ModelPrice(
        model=name,
        api_type=api_type,
        rates=standard,
        tiers=tiers,
        long_context=_long_context(entry.get("long_context"), tiers, where),
        per_million_characters=_optional_price(entry, "per_million_characters", where),
        per_minute=_optional_price(entry, "per_minute", where),
        per_image=_prices_table(entry.get("per_image", {}), f"{where}.per_image"),
        image_defaults=_image_defaults(entry.get("image_defaults"), where),
        tool_fees=tool_fees,
        regional_uplift=_optional_price(entry, "regional_uplift", where),
        aliases=_names(entry.get("aliases", []), f"{where}.aliases"),
        provider=_provider(entry.get("provider", "openai"), where),
        source=source,
        checked=_date(entry.get("checked"), f"{where}.checked"),
        shutdown=_date(entry.get("shutdown"), f"{where}.shutdown"),
    )


def _provider(value: object, where: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", value):
        raise CatalogError(f"{where}.provider must be a provider id such as openai, anthropic, groq")
    return value


def _chat_only(api_type: str, fees: dict[str, Decimal]) -> dict[str, Decimal]:
    return fees if api_type == "chat" else {}


def _rates(entry: dict[str, Any], where: str) -> Rates:
    return Rates(**{key: _price(entry[key], f"{where}.{key}") for key in TOKEN_RATES if key in entry})


def _tiers(value: object, standard: Rates, where: str) -> dict[str, Rates]:
    if not isinstance(value, dict):
        raise CatalogError(f"{where}.tiers must be a table")
    tiers = {}
    for tier, entry in value.items():
        if tier not in TIERS:
            raise CatalogError(f"{where}.tiers: unknown tier {tier!r} (one of {TIERS})")
        if not isinstance(entry, dict) or set(entry) - set(TOKEN_RATES):
            raise CatalogError(f"{where}.tiers.{tier} must be a table of token rates")
        tiers[tier] = _rates(entry, f"{where}.tiers.{tier}").over(standard)
    return tiers


def _long_context(value: object, tiers: dict[str, Rates], where: str) -> LongContext | None:
    if value is None:
        return None
    where = f"{where}.long_context"
    allowed = {"above", "input_factor", "output_factor", "tiers"}
    if not isinstance(value, dict) or set(value) - allowed or "above" not in value:
        raise CatalogError(f"{where} must be a table of above, input_factor, output_factor, tiers")
    above = value["above"]
    if type(above) is not int or above <= 0:
        raise CatalogError(f"{where}.above must be a positive number of tokens")
    applies = _names(value.get("tiers", [STANDARD]), f"{where}.tiers")
    missing = [t for t in applies if t not in tiers]
    if missing:
        raise CatalogError(f"{where}.tiers: the model has no {missing[0]!r} tier")
    factors = (
        _price(value.get("input_factor", "1"), f"{where}.input_factor"),
        _price(value.get("output_factor", "1"), f"{where}.output_factor"),
    )
    return LongContext(above=above, rates={t: tiers[t].scaled(*factors) for t in applies})


def _image_defaults(value: object, where: str) -> tuple[str | None, str | None]:
    if value is None:
        return (None, None)
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise CatalogError(f'{where}.image_defaults must be ["quality", "size"]')
    return (value[0], value[1])


def _prices_table(value: object, where: str) -> dict[str, Decimal]:
    if not isinstance(value, dict):
        raise CatalogError(f"{where} must be a table")
    return {k: _price(v, f"{where}.{k}") for k, v in value.items()}


def _names(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise CatalogError(f"{where} must be a list of names")
    return tuple(value)


def _date(value: object, where: str) -> date | None:
    if value is None:
        return None
    if isinstance(value, date):
        return value
    raise CatalogError(f"{where} must be a date (2026-11-25)")


def _optional_price(entry: dict[str, Any], key: str, where: str) -> Decimal | None:
    return _price(entry[key], f"{where}.{key}") if key in entry else None


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
# LiteLLM per-token fields and the rate each one is, per 1M.
_LITELLM_TOKEN_FIELDS = {
    "input_cost_per_token": "input",
    "cache_read_input_token_cost": "cached_input",
    "cache_creation_input_token_cost": "cache_write",
    "output_cost_per_token": "output",
    "input_cost_per_audio_token": "audio_input",
    "cache_read_input_audio_token_cost": "cached_audio_input",
    "output_cost_per_audio_token": "audio_output",
    "input_cost_per_image_token": "image_input",
    "cache_read_input_image_token_cost": "cached_image_input",
    "output_cost_per_image_token": "image_output",
}
# LiteLLM's provider names that are spelled otherwise here; a missing one is openai.
_LITELLM_PROVIDERS = {"None": "openai", "gemini": "google", "together_ai": "together", "xai": "x-ai"}
_LITELLM_TIERS = {"_flex": "flex", "_priority": "priority", "_batches": "batch"}


def parse_litellm(text: str, source: str) -> tuple[list[ModelPrice], list[str]]:
    """The models of LiteLLM's JSON catalog (USD per token, character,
    second or image), parsed straight to Decimal, and the models refused.

    Entries of a ``mode`` taximeter does not meter are skipped. An entry with
    a cost field taximeter cannot read is refused by name (left unpriced,
    never priced without it); the second list says which and why.
    """
    try:
        data = json.loads(text, parse_float=Decimal, parse_int=Decimal)
    except ValueError as exc:
        raise CatalogError(f"{source}: {exc}") from exc
    if not isinstance(data, dict):
        raise CatalogError(f"{source}: expected a JSON object of models")
    models, refused = [], []
    for name, entry in data.items():
        if name == "sample_spec" or not isinstance(entry, dict) or entry.get("mode") not in _LITELLM_MODES:
            continue  # sample_spec documents the format: no model
        try:
            models.append(_litellm_model(name, entry, source))
        except CatalogError as exc:
            refused.append(str(exc))
    return models, refused


def _litellm_model(name: str, entry: dict[str, Any], source: str) -> ModelPrice:
    where = f"{source}: {name}"
    api_type = _LITELLM_MODES[entry["mode"]]
    read: set[str] = set()

    def take(key: str, scale: Decimal = Decimal(1)) -> Decimal | None:
        value = entry.get(key)
        read.add(key)
        if value is None:
            return None
        if not isinstance(value, Decimal) or value < 0:
            raise CatalogError(f"{where}.{key}: not a price")
        return value * scale

    def rates(suffix: str) -> Rates:
        return Rates(**{rate: take(key + suffix, _MILLION) for key, rate in _LITELLM_TOKEN_FIELDS.items()})

    standard = rates("")
    tiers = {STANDARD: standard}
    for suffix, tier in _LITELLM_TIERS.items():
        if not (tier_rates := rates(suffix)).empty:
            tiers[tier] = tier_rates.over(standard)
    long_context = None
    thresholds = sorted({int(m.group(1)) for k in entry if (m := _ABOVE.search(k))})
    if len(thresholds) > 1:
        raise CatalogError(f"{where}: more than one context threshold; price it in TOML")
    for above in thresholds:
        long_rates = rates(f"_above_{above}k_tokens")
        if not long_rates.empty:
            long_context = LongContext(above * 1000, {STANDARD: long_rates.over(standard)})
    per_second = take("input_cost_per_second")
    per_output_second = take("output_cost_per_second")
    per_image = take("output_cost_per_image")
    per_character = take("input_cost_per_character", _MILLION)
    unread = sorted(k for k in entry if _is_cost(k) and k not in read and entry[k] is not None)
    if unread:
        raise CatalogError(f"{where}: {unread[0]} is a price taximeter cannot read; price it in TOML")
    if api_type in ("chat", "embeddings") and standard.empty:
        raise CatalogError(f"{where}: no token price; price it in TOML")
    seconds = per_second if per_second is not None else per_output_second
    litellm_provider = str(entry.get("litellm_provider"))
    return ModelPrice(
        model=name,
        api_type=api_type,
        rates=standard,
        tiers=tiers,
        long_context=long_context,
        per_million_characters=per_character,
        per_minute=None if seconds is None else seconds * _SIXTY,
        per_image={} if per_image is None else {"default": per_image},
        provider=_LITELLM_PROVIDERS.get(litellm_provider, litellm_provider),
        source=source,
    )


_ABOVE = re.compile(r"_above_(\d+)k_tokens$")


def _is_cost(key: str) -> bool:
    return "cost" in key or "pric" in key
