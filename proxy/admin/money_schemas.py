"""The OpenAPI schemas of the admin API's money terms and limits (sections
6b, 6c): exactly what :mod:`taximeter.pricing.terms` and
:mod:`taximeter.pricing.limits` accept, and what the answers hold."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from taximeter.pricing.budgets import MAX_COST_LIMIT, MAX_TOKEN_LIMIT
from taximeter.pricing.limits import MAX_LIMITS, METRICS, WINDOWS
from taximeter.pricing.terms import MAX_MARKUP, MAX_RATE
from taximeter.proxy.portal_links import MAX_EXPIRES_S, MIN_EXPIRES_S

__all__ = ["MONEY_SCHEMAS", "NAME", "positive_decimal"]

_MONEY = {"type": "string", "pattern": r"^-?\d+(\.\d+)?$", "description": "A decimal amount, never a float."}
_TIME = {"type": "string", "format": "date-time"}
# A client's display name: not blank (Python's str.strip() also takes
# \x1c-\x1f for blanks, which \s does not), at most 200 characters.
NAME = {"type": "string", "minLength": 1, "maxLength": 200, "pattern": r"[^\s\x1c-\x1f]"}
_CURRENCY = {"type": "string", "pattern": "^[A-Z]{3}$", "description": "An ISO 4217 code, such as BRL."}
# No control characters, the same rule the handlers apply.
_PLAIN = r"[^\x00-\x1f\x7f-\x9f\u2028\u2029]"


def _obj(required: list[str], properties: dict[str, Any], *, closed: bool = False) -> dict[str, Any]:
    schema = {"type": "object", "required": required, "properties": properties}
    return {**schema, "additionalProperties": False} if closed else schema


def _globs(description: str) -> dict[str, Any]:
    """Null, or 1 to 100 model names or globs without control characters."""
    names = {"type": "string", "pattern": f"^{_PLAIN}{{1,256}}$"}
    return {
        "anyOf": [{"type": "array", "minItems": 1, "maxItems": 100, "items": names}, {"type": "null"}],
        "description": description,
    }


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
            "name": NAME,
            "currency": {"anyOf": [_CURRENCY, {"type": "null"}], "description": "null: the server's."},
            "markup": {"anyOf": [positive_decimal(MAX_MARKUP), {"type": "null"}], "description": "null: 1."},
            "models_allowed": _globs("Model names or globs (gpt-5*); null: every model."),
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
    "PortalLinkInput": _obj(
        [],
        {
            "expires_in_s": {
                "type": "integer",
                "minimum": MIN_EXPIRES_S,
                "maximum": MAX_EXPIRES_S,
                "default": 86_400,
            }
        },
        closed=True,
    ),
    "PortalLink": _obj(["url", "expires_at"], {"url": {"type": "string"}, "expires_at": _TIME}),
    "NewCredit": {
        "allOf": [
            {"$ref": "#/components/schemas/Credit"},
            _obj(["budget"], {"budget": {"$ref": "#/components/schemas/BudgetStatus"}}),
        ]
    },
}


_SLUG = {"type": "string", "pattern": r"^[a-z0-9][a-z0-9_-]{0,62}$"}
_COUNT = {"type": "integer", "minimum": 1, "maximum": MAX_TOKEN_LIMIT}
_GLOBS = _globs("The models it counts (names or globs, gpt-5*); null: every model.")
_WINDOW = {"enum": list(WINDOWS), "default": "none"}
_PER = {"enum": ["client", "end_user"], "default": "client"}


def _limit(metric: dict[str, Any], amount: dict[str, Any], window: dict[str, Any]) -> dict[str, Any]:
    properties = {
        "name": _SLUG,
        "metric": metric,
        "limit": amount,
        "window": window,
        "per": _PER,
        "models": _GLOBS,
    }
    return _obj(["name", "metric", "limit"], properties, closed=True)


_AMOUNT = {
    "anyOf": [{"type": "integer"}, _MONEY],
    "description": "Tokens, requests or calls; money as a decimal string.",
}
LIMIT_SCHEMAS: dict[str, Any] = {
    "LimitsInput": _obj(
        ["limits"],
        {
            "limits": {
                "type": "array",
                "maxItems": MAX_LIMITS,
                "items": {
                    "anyOf": [
                        _limit({"const": "cost"}, positive_decimal(MAX_COST_LIMIT), _WINDOW),
                        _limit({"enum": ["tokens", "requests"]}, _COUNT, _WINDOW),
                        _limit({"const": "concurrent"}, _COUNT, {"const": "none"}),
                    ]
                },
                "description": "The whole set (names unique: 409 otherwise).",
            }
        },
        closed=True,
    ),
    "LimitStatus": _obj(
        ["name", "metric", "limit", "window", "per", "models", "used", "reserved", "remaining", "resets_at"],
        {
            "name": {"type": "string"},
            "metric": {"enum": list(METRICS)},
            "limit": _AMOUNT,
            "window": {"enum": list(WINDOWS)},
            "per": {"enum": ["client", "end_user"]},
            "models": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]},
            "used": _AMOUNT,
            "reserved": _AMOUNT,
            "remaining": _AMOUNT,
            "resets_at": {"anyOf": [_TIME, {"type": "null"}]},
            "forecast": {
                "description": "a spend cap's course at its burn rate so far; null: too soon to say",
                "anyOf": [
                    {
                        "type": "object",
                        "properties": {
                            "at_window_end": _AMOUNT,
                            "runs_out_at": {"anyOf": [_TIME, {"type": "null"}]},
                        },
                    },
                    {"type": "null"},
                ],
            },
        },
    ),
    "Limits": _obj(
        ["client_id", "end_user", "data"],
        {
            "client_id": {"type": "string"},
            "end_user": {"type": ["string", "null"]},
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/LimitStatus"}},
        },
    ),
}
MONEY_SCHEMAS.update(LIMIT_SCHEMAS)
