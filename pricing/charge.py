"""Charging: usage + price + status → the ledger event. One pure step.

Every metered call ends here, however it ended (a full answer, a stream cut
off, an upstream that timed out, a client that left): the gateway says what
it knows, and these rules decide what is charged.

- A count that is missing, unreadable or cut off (``usage.estimated``) of a
  call that may have cost money is never less than what was reserved for it.
- A call the upstream refused (status ≥ 400) is free, unless its body reports
  token usage (the upstream charged it) or its count is estimated.
- A model the catalogs do not name is recorded at 0, flagged ``unpriced``,
  except moderation, which is free by nature.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from taximeter.pricing.catalog import ModelPrice
from taximeter.pricing.estimate import at_least
from taximeter.pricing.models import UsageEvent
from taximeter.pricing.money import convert, money_text, quantize
from taximeter.pricing.usage import Family, Usage

__all__ = [
    "CallFacts",
    "Charge",
    "Tariff",
    "charge",
    "price_of",
    "price_source",
    "tool_image_cost",
    "usage_charged",
]

# Endpoint families whose calls cost nothing, priced or not.
FREE_FAMILIES = frozenset({"moderation"})


@dataclass(frozen=True, slots=True)
class Tariff:
    """What a client pays for a USD of list price: ``exchange_rate`` units of
    ``currency`` (the rate in force when its call was admitted), times its
    ``markup``."""

    currency: str
    exchange_rate: Decimal
    markup: Decimal = Decimal(1)


@dataclass(frozen=True, slots=True)
class CallFacts:
    """What the ledger records of a call besides its usage: who, what, where,
    and what was reserved for it (the floor of an estimated count)."""

    request_id: str
    client_id: str
    api_type: str
    model: str
    endpoint: str
    family: Family
    price: ModelPrice | None
    end_user: str | None = None
    conversation: str | None = None
    reserved: Usage = field(default_factory=Usage)
    upstream: str | None = None
    latency_ms: int | None = None
    regional: bool = False  # served by a regional-processing (data residency) endpoint
    tool_prices: Mapping[str, ModelPrice] = field(default_factory=dict)  # image models its tools used


@dataclass(frozen=True, slots=True)
class Charge:
    """The price of one call: USD, the client's currency, and the rate and
    markup between them."""

    cost_usd: Decimal
    cost: Decimal
    exchange_rate: Decimal
    currency: str
    unpriced: bool
    markup: Decimal = Decimal(1)


def price_of(
    price: ModelPrice | None,
    usage: Usage,
    tariff: Tariff,
    *,
    regional: bool = False,
    tool_prices: Mapping[str, ModelPrice] | None = None,
) -> Charge:
    """``usage`` at ``price`` (0 and ``unpriced`` without one), in ``tariff``'s
    currency; images made by a tool at their image model's ``tool_prices``."""
    if price is None:
        cost_usd = quantize(Decimal(0))
    else:
        cost_usd = quantize(
            price.cost_usd(usage, regional=regional) + tool_image_cost(usage, tool_prices or {})
        )
    return Charge(
        cost_usd=cost_usd,
        cost=convert(cost_usd, tariff.exchange_rate * tariff.markup),  # rounded once
        exchange_rate=tariff.exchange_rate,
        currency=tariff.currency,
        unpriced=price is None,
        markup=tariff.markup,
    )


def tool_image_cost(usage: Usage, tool_prices: Mapping[str, ModelPrice]) -> Decimal:
    """USD of the images the image_generation tool made, each at its image
    model's price for its quality and size (an image model not in
    ``tool_prices`` is named in the event's ``price_source``)."""
    total = Decimal(0)
    for image in usage.tool_images:
        price = tool_prices.get(image.model)
        if price is not None and price.per_image:
            total += price.image_price(image.quality, image.size)
    return total


def usage_charged(usage: Usage, status: int, reserved: Usage) -> Usage:
    """The usage a call is charged for (the first two rules of this module)."""
    if usage.estimated:
        usage = at_least(usage, reserved)
    return usage if status < 400 or usage.has_tokens or usage.estimated else Usage()


def charge(call: CallFacts, usage: Usage, status: int, tariff: Tariff, now: datetime) -> UsageEvent:
    """The ledger event of ``call``, ended with ``status`` after ``usage``."""
    charged = usage_charged(usage, status, call.reserved)
    cost = price_of(call.price, charged, tariff, regional=call.regional, tool_prices=call.tool_prices)
    return UsageEvent(
        request_id=call.request_id,
        client_id=call.client_id,
        end_user=call.end_user,
        conversation=call.conversation,
        api_type=call.api_type,
        model=call.model,
        endpoint=call.endpoint,
        status=status,
        created_at=now,
        input_tokens=charged.input_tokens,
        output_tokens=charged.output_tokens,
        cached_tokens=charged.cached_tokens,
        reasoning_tokens=charged.reasoning_tokens,
        characters=charged.characters,
        audio_seconds=charged.audio_seconds,
        images=charged.images,
        cost_usd=cost.cost_usd,
        cost=cost.cost,
        currency=cost.currency,
        exchange_rate=cost.exchange_rate,
        markup=cost.markup,
        estimated=charged.estimated,
        unpriced=cost.unpriced and call.family not in FREE_FAMILIES,
        service_tier=charged.service_tier,
        tool_calls=tuple(sorted(charged.tool_calls.items())),
        price_source=price_source(call.price, charged, regional=call.regional, tool_prices=call.tool_prices),
        upstream=call.upstream,
        latency_ms=call.latency_ms,
    )


def price_source(
    price: ModelPrice | None,
    usage: Usage,
    *,
    regional: bool = False,
    tool_prices: Mapping[str, ModelPrice] | None = None,
) -> str | None:
    """Which catalog priced the call, the regional uplift it carries, and what
    it could not price as the response said (a tier it has no rates for, a
    tool it has no fee for)."""
    if price is None:
        return None
    notes = []
    if regional and price.regional_uplift is not None:
        notes.append(f"regional +{money_text(price.regional_uplift * 100)}%")
    tier = price.unmet_tier(usage)
    if tier is not None:
        notes.append(f"no {tier} rates: standard")
    by_image = {"image_generation"} if usage.tool_images else set()
    notes += [f"no {t} fee" for t in sorted(usage.tool_calls) if price.fee(t) is None and t not in by_image]
    tool_prices = tool_prices or {}
    unpriced = {
        i.model for i in usage.tool_images if i.model not in tool_prices or not tool_prices[i.model].per_image
    }
    notes += [f"no image price for {model}" for model in sorted(unpriced)]
    notes += [f"images at {model}" for model in sorted({i.model for i in usage.tool_images} - unpriced)]
    return price.source + (f" ({'; '.join(notes)})" if notes else "")
