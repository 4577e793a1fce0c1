"""The base catalog of every provider: the data of ``genai-prices`` (pinned in
pyproject.toml; its data ships inside the package and is never fetched).

Only its data is used, never its lookup: a model answers to its id and to the
names its entry lists exactly (``equals``); its prefix, substring and pattern
rules are ignored, so nothing is priced by a guess. A price the data gives
in a unit taximeter does not meter (documents, video, per-request fees,
several context thresholds) leaves that model out, named in the refusals,
rather than priced without it. Where the data gives prices by time of day,
the dearer one is taken (a call is never charged below its price).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import date
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from taximeter.pricing.rates import STANDARD, LongContext, ModelPrice, Rates

__all__ = ["GenaiCatalog", "from_genai", "load_genai", "provider_for_url"]

# genai-prices units (per 1M tokens) and the rate each one is here.
_TOKEN_UNITS = {
    "input_mtok": "input",
    "cache_read_mtok": "cached_input",
    "cache_write_mtok": "cache_write",
    "output_mtok": "output",
    "input_audio_mtok": "audio_input",
    "cache_audio_read_mtok": "cached_audio_input",
    "output_audio_mtok": "audio_output",
    "input_image_mtok": "image_input",
    "cache_image_read_mtok": "cached_image_input",
    "output_image_mtok": "image_output",
}
# Per 1K calls of a built-in tool.
_TOOL_UNITS = {"web_searches_kcount": "web_search", "storage_searches_kcount": "file_search"}
_TIER_VARIANTS = {
    ("service_tier", "flex"): "flex",
    ("service_tier", "priority"): "priority",
    ("processing", "batch"): "batch",
}
# Units read elsewhere than as token rates.
_NOT_TOKENS = frozenset(
    {*_TOOL_UNITS, "input_mchars", "audio_hours", "input_audio_hours", "cache_write_1h_mtok"}
)
_THOUSAND = Decimal(1000)
_SIXTY = Decimal(60)


class _Unsupported(Exception):
    pass


@dataclass(frozen=True, slots=True)
class GenaiCatalog:
    models: tuple[ModelPrice, ...]
    refused: tuple[str, ...]  # "provider/model: why"
    url_patterns: tuple[tuple[str, str], ...]  # (provider, regex of its API base URL), in the data's order


@functools.lru_cache(maxsize=4)
def load_genai(today: date) -> GenaiCatalog:
    """The catalog of the installed ``genai-prices`` data as of ``today``
    (read once per day and process: its entries are immutable)."""
    from importlib.metadata import version

    from genai_prices.data import providers  # its data module alone: nothing is fetched

    return from_genai(providers, today, f"genai-prices {version('genai-prices')}")


def from_genai(providers: Iterable[Any], today: date, source: str) -> GenaiCatalog:
    models: list[ModelPrice] = []
    refused: list[str] = []
    patterns = []
    for provider in providers:
        patterns.append((provider.id, provider.api_pattern))
        seen: set[str] = set()
        for info in provider.models:
            try:
                price = _model(provider.id, info, today, source)
            except _Unsupported as exc:
                refused.append(f"{provider.id}/{info.id}: {exc}")
                continue
            names = [n for n in dict.fromkeys((price.model, *price.aliases)) if n not in seen]
            seen.update(names)
            if names and names[0] == price.model:  # an id another model took is left out
                models.append(replace(price, aliases=tuple(names[1:])))
    return GenaiCatalog(tuple(models), tuple(refused), tuple(patterns))


def provider_for_url(base_url: str, patterns: Iterable[tuple[str, str]]) -> str | None:
    """The provider whose API base URL pattern ``base_url`` matches, if any."""
    for provider, pattern in patterns:
        if pattern and re.match(pattern, base_url):
            return provider
    return None


def _model(provider: str, info: Any, today: date, source: str) -> ModelPrice:
    prices = _current(info.prices, today)
    standard, long_rates, above = _rates(prices)
    tiers = {STANDARD: standard}
    long_context = {STANDARD: long_rates} if long_rates is not None else {}
    for tier, variant in _variants(info.price_variants or (), today).items():
        # A variant overrides the standard prices unit by unit, tiered ones whole.
        merged = SimpleNamespace(
            **{unit: _first(getattr(variant, unit), value) for unit, value in vars(prices).items()}
        )
        tiers[tier], tier_long, tier_above = _rates(merged)
        if tier_long is not None:
            if above is not None and tier_above != above:
                raise _Unsupported("tiers with different context thresholds")
            above = tier_above
            long_context[tier] = tier_long
    units = _unit_prices(prices)
    if standard.empty and not units:
        raise _Unsupported("no price listed")
    return ModelPrice(
        model=info.id,
        api_type=_api_type(standard, units),
        rates=standard,
        tiers=tiers,
        long_context=None if above is None else LongContext(above, long_context),
        per_million_characters=units.get("per_million_characters"),
        per_minute=units.get("per_minute"),
        tool_fees=_tool_fees(prices),
        aliases=tuple(_exact_names(info.match)),
        provider=provider,
        source=source,
    )


def _variants(variants: Iterable[Any], today: date) -> dict[str, Any]:
    """The prices of each tier in force ``today``: the variant that started
    last (the data lists them newest first; the order is not relied on)."""
    chosen: dict[str, Any] = {}
    for variant in variants:
        tier = _TIER_VARIANTS.get(next(iter(variant.when.items()), ("", "")))
        if tier is None or not _in_force(variant.constraint, today):
            continue
        start = _start(variant.constraint)
        if tier not in chosen or start > chosen[tier][0]:
            chosen[tier] = (start, variant.prices)
    return {tier: prices for tier, (_, prices) in chosen.items()}


def _start(constraint: Any) -> date:
    return date.min if constraint is None else constraint.start_date


def _first(value: Any, default: Any) -> Any:
    return default if value is None else value


def _current(prices: Any, today: date) -> Any:
    """The prices in force ``today``: the latest dated set that has started,
    or, among prices by time of day, the dearest."""
    if not isinstance(prices, list):
        return prices
    dated = [p for p in prices if type(p.constraint).__name__ in ("NoneType", "StartDateConstraint")]
    started = [p for p in dated if _in_force(p.constraint, today)]
    if not started:
        raise _Unsupported("no price in force")
    current = max(started, key=lambda p: _start(p.constraint))
    by_hour = [p for p in prices if type(p.constraint).__name__ == "TimeOfDateConstraint"]
    return max([current, *by_hour], key=lambda p: _weight(p.prices)).prices


def _weight(prices: Any) -> Decimal:
    return sum(
        (_base(getattr(prices, unit)) or Decimal(0) for unit in ("input_mtok", "output_mtok")), Decimal(0)
    )


def _in_force(constraint: Any, today: date) -> bool:
    if constraint is None:
        return True
    start = getattr(constraint, "start_date", None)
    return start is not None and start <= today


def _rates(prices: Any) -> tuple[Rates, Rates | None, int | None]:
    """Standard rates, the long-context ones (if any) and their threshold."""
    base: dict[str, Decimal] = {}
    long: dict[str, Decimal] = {}
    above = None
    for unit, value in vars(prices).items():
        if value is None or unit in _NOT_TOKENS:
            continue
        if unit not in _TOKEN_UNITS:
            raise _Unsupported(f"a price in {unit}, which taximeter does not meter")
        rate = _TOKEN_UNITS[unit]
        base[rate] = value.base if hasattr(value, "base") else Decimal(value)
        tiers = getattr(value, "tiers", None)
        if tiers:
            if len(tiers) > 1 or (above is not None and tiers[0].start != above):
                raise _Unsupported("more than one context threshold")
            above = tiers[0].start
            long[rate] = tiers[0].price
    hour_write = _base(getattr(prices, "cache_write_1h_mtok", None))
    if hour_write is not None:  # which cache a write went to is not reported: the dearer
        base["cache_write"] = max(hour_write, base.get("cache_write", hour_write))
    standard = Rates(**base)
    return standard, (Rates(**long).over(standard) if long else None), above


def _base(value: Any) -> Decimal | None:
    if value is None:
        return None
    return value.base if hasattr(value, "base") else Decimal(value)


def _unit_prices(prices: Any) -> dict[str, Decimal]:
    units = {}
    if prices.input_mchars is not None:
        units["per_million_characters"] = _base(prices.input_mchars)
    hours = getattr(prices, "audio_hours", None) or getattr(prices, "input_audio_hours", None)
    if hours is not None:
        units["per_minute"] = _base(hours) / _SIXTY  # type: ignore[operator]
    return {k: v for k, v in units.items() if v is not None}


def _tool_fees(prices: Any) -> dict[str, Decimal]:
    return {
        tool: _base(getattr(prices, unit)) / _THOUSAND  # type: ignore[operator]
        for unit, tool in _TOOL_UNITS.items()
        if getattr(prices, unit, None) is not None
    }


def _api_type(rates: Rates, units: dict[str, Decimal]) -> str:
    if "per_million_characters" in units:
        return "tts"
    if "per_minute" in units:
        return "whisper"
    if rates.output is None and rates.input is not None:
        return "embeddings"
    return "chat"


def _exact_names(clause: Any) -> Iterator[str]:
    """The names a match clause lists exactly (``equals``, alone or in an ``or``)."""
    if clause is None:
        return
    if hasattr(clause, "equals"):
        yield clause.equals
    for inner in getattr(clause, "or_", None) or ():
        yield from _exact_names(inner)
