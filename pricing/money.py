"""Money as :class:`~decimal.Decimal`, and its one integer form.

Every cost is quantized to :data:`NANO` (1e-9 of a currency unit) with
``ROUND_HALF_EVEN`` as soon as it is computed. Counters that must be integers
(Redis, SQLite sums) hold *nanos*; because each event is quantized before it is
summed, the sum of the ledger and the counters are always exactly equal.
Micro-units would not do: 5 embedding tokens at $0.02/1M cost $0.0000001.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

__all__ = [
    "NANO",
    "NANOS_PER_UNIT",
    "convert",
    "from_nanos",
    "money_text",
    "parse_money",
    "quantize",
    "to_nanos",
]

NANO = Decimal("0.000000001")
NANOS_PER_UNIT = 1_000_000_000


def quantize(amount: Decimal) -> Decimal:
    """Round ``amount`` to the ledger's precision (1e-9), half to even."""
    return amount.quantize(NANO, ROUND_HALF_EVEN)


def to_nanos(amount: Decimal) -> int:
    """Integer nano-units of ``amount`` (rounded half to even first)."""
    return int(quantize(amount) * NANOS_PER_UNIT)


def from_nanos(nanos: int) -> Decimal:
    """The exact Decimal for an integer count of nano-units."""
    return quantize(Decimal(nanos) / NANOS_PER_UNIT)


def convert(amount_usd: Decimal, rate: Decimal) -> Decimal:
    """``amount_usd`` in a currency worth ``rate`` units per USD, quantized."""
    return quantize(amount_usd * rate)


def money_text(amount: Decimal) -> str:
    """``amount`` as the text JSON carries it, the one rule for every API and
    webhook: plain notation, never an exponent, no trailing zeros ("500",
    "0.0000005", "12.5"), and zero as "0"."""
    return format(amount.normalize(), "f") if amount else "0"


def parse_money(value: object) -> Decimal:
    """A Decimal from a JSON/TOML string or number; floats go through ``str``.

    Raises ValueError for anything that is not a finite, non-negative amount.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
        raise ValueError("must be a decimal string or number")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation as exc:
        raise ValueError(f"not a decimal amount: {value!r}") from exc
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"must be a finite, non-negative amount: {value!r}")
    return amount
