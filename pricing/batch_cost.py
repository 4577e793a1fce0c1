"""What a batch is expected to cost, from what its input file asks (pure):
reserved at its admission, at the batch tier (spec section 4b)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from taximeter.pricing.batch_input import BatchInput, ModelLines
from taximeter.pricing.batch_output import BATCH_TIER
from taximeter.pricing.catalog import ModelPrice
from taximeter.pricing.charge import Tariff, price_of
from taximeter.pricing.money import convert, quantize, to_nanos
from taximeter.pricing.usage import Usage

__all__ = ["BatchEstimate", "estimate_batch", "one_line"]


@dataclass(frozen=True, slots=True)
class BatchEstimate:
    """A batch's estimated usage and cost (USD, and in its client's
    currency); per model ``(lines, tokens, cost in nanos of that currency)``,
    what it holds on the limits covering each model; and its dearest model,
    the one whose single line costs most."""

    usage: Usage
    cost_usd: Decimal
    cost: Decimal
    per_model: dict[str, tuple[int, int, int]]
    dearest: str


def _usage(lines: ModelLines, count: int) -> Usage:
    """``count`` lines of a model, at its lines' average (rounded up)."""
    per_in = -(-lines.input_tokens // lines.lines)
    per_out = -(-lines.output_tokens // lines.lines)
    return Usage(
        input_tokens=per_in * count if count != lines.lines else lines.input_tokens,
        output_tokens=per_out * count if count != lines.lines else lines.output_tokens,
        service_tier=BATCH_TIER,
        estimated=True,
    )


def one_line(read: BatchInput, prices: Mapping[str, ModelPrice | None], tariff: Tariff) -> tuple[str, Usage]:
    """The dearest model of a batch and the usage of one of its lines: what
    a line whose own usage cannot be read is charged as (never less than any
    line of the batch was estimated at)."""
    best: tuple[Decimal, str, Usage] | None = None
    for model, lines in sorted(read.models.items()):
        usage = _usage(lines, 1)
        cost = price_of(prices.get(model), usage, tariff).cost_usd
        if best is None or cost > best[0] or (cost == best[0] and usage.total_tokens > best[2].total_tokens):
            best = (cost, model, usage)
    if best is None:
        raise ValueError("a batch input with no lines has no line to charge")
    return best[1], best[2]


def estimate_batch(
    read: BatchInput, prices: Mapping[str, ModelPrice | None], tariff: Tariff
) -> BatchEstimate:
    """Every line of ``read`` at its model's batch-tier price (the standard
    one where the catalog has no batch rates)."""
    total_in = total_out = 0
    cost_usd = Decimal(0)
    per_model = {}
    rate = tariff.exchange_rate * tariff.markup
    for model, lines in sorted(read.models.items()):
        usage = _usage(lines, lines.lines)
        usd = price_of(prices.get(model), usage, tariff).cost_usd
        cost_usd += usd
        total_in += usage.input_tokens
        total_out += usage.output_tokens
        per_model[model] = (lines.lines, usage.total_tokens, to_nanos(convert(usd, rate)))
    dearest, _ = one_line(read, prices, tariff)
    usage = Usage(input_tokens=total_in, output_tokens=total_out, service_tier=BATCH_TIER, estimated=True)
    cost_usd = quantize(cost_usd)
    return BatchEstimate(usage, cost_usd, convert(cost_usd, rate), per_model, dearest)
