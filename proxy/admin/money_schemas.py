"""The OpenAPI schemas of the admin API's money terms (section 6c): exactly
what :mod:`taximeter.pricing.terms` accepts, and what the answers hold."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from taximeter.pricing.budgets import MAX_COST_LIMIT
from taximeter.pricing.terms import MAX_MARKUP, MAX_RATE

__all__ = ["MONEY_SCHEMAS", "positive_decimal"]

_MONEY = {"type": "string", "pattern": r"^-?\d+(\.\d+)?$", "description": "A decimal amount, never a float."}
_TIME = {"type": "string", "format": "date-time"}
_CURRENCY = {"type": "string", "pattern": "^[A-Z]{3}$", "description": "An ISO 4217 code, such as BRL."}
# No control characters, the same rule the handlers apply.
_PLAIN = r"[^\x00-\x1f\x7f-\x9f\u2028\u2029]"


def _obj(required: list[str], properties: dict[str, Any], *, closed: bool = False) -> dict[str, Any]:
    schema = {"type": "object", "required": required, "properties": properties}
    return {**schema, "additionalProperties": False} if closed else schema


def positive_decimal(maximum: Decimal) -> dict[str, Any]:
    """A decimal in (0, ``maximum``] (a digit times a power of ten): a string
    with at most 9 decimal places, or a number (rounded to 9 places)."""
    text = str(int(maximum))
    lead, zeros = int(text[0]), len(text) - 1
    whole = [rf"[1-9]\d{{0,{zeros - 1}}}(\.\d{{0,9}})?"] if zeros else []
    if lead > 1:
        whole.append(rf"[1-{lead - 1}]\d{{{zeros}}}(\.\d{{0,9}})?")
    whole.append(rf"{text}(\.0{{0,9}})?")
    fractions = "|".join(rf"0{{{k}}}[1-9]\d{{0,{8 - k}}}" for k in range(9))
    pattern = rf"^0*({'|'.join(whole)}|0?\.({fractions}))$"
    return {
        "anyOf": [
            {"type": "string", "pattern": pattern},
            {"type": "number", "minimum": 1e-9, "maximum": int(maximum)},
        ],
        "description": f"Greater than zero and at most {text}, with at most 9 decimal places.",
    }


MONEY_SCHEMAS: dict[str, Any] = {
    "ClientPatch": _obj(
        [],
        {
            "name": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": r"[^\s\x1c-\x1f]"},
            "currency": {"anyOf": [_CURRENCY, {"type": "null"}], "description": "null: the server's."},
            "markup": {"anyOf": [positive_decimal(MAX_MARKUP), {"type": "null"}], "description": "null: 1."},
            "models_allowed": {
                "anyOf": [
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 100,
                        "items": {"type": "string", "pattern": f"^{_PLAIN}{{1,256}}$"},
                    },
                    {"type": "null"},
                ],
                "description": "Model names or globs (gpt-5*); null: every model.",
            },
        },
        closed=True,
    ),
    "Rate": _obj(
        ["currency", "rate", "since"], {"currency": {"type": "string"}, "rate": _MONEY, "since": _TIME}
    ),
    "RateInput": _obj(["rate"], {"rate": positive_decimal(MAX_RATE)}, closed=True),
    "Rates": _obj(
        ["current", "data"],
        {
            "current": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/Rate"}},
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/Rate"}},
        },
    ),
    "Credit": _obj(
        ["id", "client_id", "amount", "note", "created_at", "period_start"],
        {
            "id": {"type": "string"},
            "client_id": {"type": "string"},
            "amount": _MONEY,
            "note": {"type": "string"},
            "created_at": _TIME,
            "period_start": _TIME,
        },
    ),
    "CreditInput": _obj(
        ["amount"],
        {
            "amount": positive_decimal(MAX_COST_LIMIT),
            "note": {"type": "string", "pattern": f"^{_PLAIN}{{0,500}}$"},
        },
        closed=True,
    ),
    "NewCredit": {
        "allOf": [
            {"$ref": "#/components/schemas/Credit"},
            _obj(["budget"], {"budget": {"$ref": "#/components/schemas/BudgetStatus"}}),
        ]
    },
}
