"""What an operator may set of a client's money terms, validated (pure):
currency, markup, the models it may call, exchange rates and credits
(spec section 6c). Each function raises BudgetInputError naming the field."""

from __future__ import annotations

import re
from dataclasses import replace
from decimal import Decimal
from typing import Any

from taximeter.pricing.budgets import MAX_COST_LIMIT, BudgetInputError
from taximeter.pricing.models import Terms
from taximeter.pricing.money import NANO, parse_money, quantize

__all__ = [
    "CONTROL",
    "MAX_MARKUP",
    "MAX_RATE",
    "client_name",
    "credit_from_json",
    "exact_amount",
    "model_globs",
    "parse_currency",
    "plain",
    "rate_from_json",
    "terms_from_json",
]

_CURRENCY = re.compile(r"[A-Z]{3}")  # ISO 4217 alphabetic code
# Control characters and the line and paragraph separators: never in a name or note kept.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
MAX_MARKUP = Decimal(100)  # with MAX_RATE, a call's cost stays within what every store holds
MAX_RATE = Decimal(10**6)  # units per USD: above any currency's today (IRR ~42,000, VND ~26,000)
_MAX_GLOBS = 100
_MAX_GLOB_CHARS = 256
_MAX_NOTE_CHARS = 500
_CLIENT_FIELDS = frozenset({"name", "currency", "markup", "models_allowed"})


def parse_currency(value: Any, field: str = "currency") -> str:
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
        raise BudgetInputError(field, "must be a three-letter ISO 4217 code in capitals, such as BRL")
    return value


def exact_amount(value: Any, field: str, *, at_most: Decimal) -> Decimal:
    """A decimal in (0, ``at_most``] the ledger holds exactly: a string with at
    most nine decimal places, or a JSON number (binary already: rounded to nine)."""
    try:
        amount = parse_money(value)
    except ValueError as exc:
        raise BudgetInputError(field, str(exc)) from exc
    if isinstance(value, float):
        amount = quantize(amount)
    elif amount != amount.quantize(NANO):
        raise BudgetInputError(field, "must have at most 9 decimal places")
    if amount <= 0:
        raise BudgetInputError(field, "must be greater than 0")
    if amount > at_most:
        raise BudgetInputError(field, f"must be at most {at_most}")
    return amount


def terms_from_json(current: Terms, data: Any) -> tuple[str | None, Terms]:
    """The new name (None: unchanged) and terms from a PATCH body over
    ``current``: a field left out keeps its value, a null one returns to the
    default (the server's currency, markup 1, every model)."""
    if not isinstance(data, dict):
        raise BudgetInputError("body", "must be a JSON object")
    for key in data:
        if key not in _CLIENT_FIELDS:
            raise BudgetInputError(str(key), "unknown field")
    name = client_name(data["name"]) if "name" in data else None
    terms = current
    if "currency" in data:
        currency = data["currency"]
        terms = replace(terms, currency=None if currency is None else parse_currency(currency))
    if "markup" in data:
        markup = data["markup"]
        value = Decimal(1) if markup is None else exact_amount(markup, "markup", at_most=MAX_MARKUP)
        terms = replace(terms, markup=value)
    if "models_allowed" in data:
        terms = replace(terms, models_allowed=model_globs(data["models_allowed"], "models_allowed"))
    return name, terms


def client_name(value: Any) -> str:
    """A client's display name, stripped: not blank, at most 200 characters."""
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise BudgetInputError("name", "must be a non-empty string of at most 200 characters")
    return value.strip()


def model_globs(value: Any, field: str) -> tuple[str, ...] | None:
    """Null (every model), or 1 to 100 model names or globs, each once: a
    client's ``models_allowed``, a limit's ``models``."""
    if value is None:
        return None
    if not isinstance(value, list) or not 0 < len(value) <= _MAX_GLOBS:
        raise BudgetInputError(
            field, f"must be null (every model) or a list of 1 to {_MAX_GLOBS} model names or globs"
        )
    for glob in value:
        if not isinstance(glob, str) or not 0 < len(glob) <= _MAX_GLOB_CHARS or not plain(glob):
            raise BudgetInputError(field, "each must be a model name or glob, such as gpt-5*")
    return tuple(dict.fromkeys(value))


def plain(text: str) -> bool:
    """No control characters (the rule the OpenAPI schema states too)."""
    return CONTROL.search(text) is None


def rate_from_json(data: Any) -> Decimal:
    """The ``rate`` of a PUT body: units of the currency per USD."""
    if not isinstance(data, dict) or set(data) - {"rate"}:
        raise BudgetInputError("body", 'must be {"rate": "<units per USD>"}')
    if "rate" not in data:
        raise BudgetInputError("rate", "required")
    return exact_amount(data["rate"], "rate", at_most=MAX_RATE)


def credit_from_json(data: Any) -> tuple[Decimal, str]:
    """The ``amount`` (in the budget currency) and ``note`` of a credit."""
    if not isinstance(data, dict) or set(data) - {"amount", "note"}:
        raise BudgetInputError("body", 'must be {"amount": "<decimal>", "note": "<text>"}')
    if "amount" not in data:
        raise BudgetInputError("amount", "required")
    amount = exact_amount(data["amount"], "amount", at_most=MAX_COST_LIMIT)
    note = data.get("note", "")
    if not isinstance(note, str) or len(note) > _MAX_NOTE_CHARS or not plain(note):
        raise BudgetInputError("note", f"must be printable text of at most {_MAX_NOTE_CHARS} characters")
    return amount, note
