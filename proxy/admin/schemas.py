"""The schemas of the admin API's OpenAPI document (``components.schemas``):
what each answer holds and exactly what each request may send.

Kept true by tests that validate real responses against them and fuzz the
API with them (tests/test_openapi.py, tests/test_openapi_fuzz.py).
"""

from __future__ import annotations

from typing import Any
from zoneinfo import available_timezones

from taximeter.pricing.budgets import MAX_COST_LIMIT, MAX_TOKEN_LIMIT, MODE_ALIASES, MODES, PERIODS
from taximeter.pricing.rates import TOKEN_RATES
from taximeter.proxy.admin.money_schemas import MONEY_SCHEMAS, NAME
from taximeter.proxy.api_shapes import EVENT_FIELDS, STATUS_FIELDS
from taximeter.proxy.operations import GROUPINGS

__all__ = ["SCHEMAS", "obj"]

_MONEY = {"type": "string", "pattern": r"^-?\d+(\.\d+)?$", "description": "A decimal amount, never a float."}
_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_MONEY = {"anyOf": [_MONEY, {"type": "null"}]}
_NULLABLE_NUMBER = {"type": ["number", "null"]}
_RATES = {name: _NULLABLE_MONEY for name in TOKEN_RATES}  # USD per 1M tokens, one tier
# What a request may send, exactly what the handlers accept (a null is the field left out).
_POSITIVE_INT = {"type": "integer", "minimum": 1, "maximum": MAX_TOKEN_LIMIT}
_POSITIVE_MONEY = {
    "anyOf": [
        # 0 < amount <= 9000000000 (MAX_COST_LIMIT), in plain notation
        {
            "type": "string",
            "pattern": r"^0*([1-9]\d{0,8}(\.\d+)?|[1-8]\d{9}(\.\d+)?|9000000000(\.0+)?|0?\.\d*[1-9]\d*)$",
        },
        {"type": "number", "exclusiveMinimum": 0, "maximum": int(MAX_COST_LIMIT)},
    ],
    "description": f"A decimal string or a number, greater than zero and at most {MAX_COST_LIMIT}.",
}
_FRACTION = {
    "anyOf": [
        {"type": "string", "pattern": r"^(0*(0\.|\.)\d*[1-9]\d*|0*1(\.0*)?)$"},
        {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    ],
    "description": "A fraction in (0, 1], as a decimal string or a number.",
}
_SLUG = r"^[a-z0-9][a-z0-9_-]{0,62}$"


def obj(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    """An object schema with these properties, ``required`` of them required."""
    return {"type": "object", "required": required, "properties": properties}


SCHEMAS: dict[str, Any] = {
    "Error": obj(
        ["error"],
        {
            "error": obj(
                ["message", "type", "code", "param"],
                {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "code": {"type": ["string", "null"]},
                    "param": {"type": ["string", "null"]},
                },
            )
        },
    ),
    "Client": obj(
        ["id", "name", "created_at", "currency", "markup", "models_allowed"],
        {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "created_at": _TIME,
            "currency": {"type": "string"},
            "markup": _MONEY,
            "models_allowed": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]},
        },
    ),
    "ClientInput": obj(
        ["id"],
        {
            "id": {"type": "string", "pattern": _SLUG},
            "name": {
                "anyOf": [NAME, {"type": "null"}],
                "description": "Not blank, at most 200 characters; the id when left out.",
            },
        },
    ),
    "Key": obj(
        ["prefix", "client_id", "created_at", "revoked"],
        {
            "prefix": {"type": "string"},
            "client_id": {"type": "string"},
            "created_at": _TIME,
            "revoked": {"type": "boolean"},
        },
    ),
    "NewKey": {
        "allOf": [
            {"$ref": "#/components/schemas/Key"},
            obj(["key"], {"key": {"type": "string", "pattern": "^tm_", "description": "Shown once."}}),
        ]
    },
    "BudgetInput": {
        **obj(
            ["mode"],
            {
                "mode": {"enum": [*MODES, *MODE_ALIASES]},
                "token_limit": {"anyOf": [_POSITIVE_INT, {"type": "null"}]},
                "cost_limit": {"anyOf": [_POSITIVE_MONEY, {"type": "null"}]},
                "period": {"enum": list(PERIODS), "default": "monthly"},
                "timezone": {
                    "anyOf": [{"enum": sorted(available_timezones())}, {"enum": ["", None]}],
                    "description": "An IANA timezone; the server's when empty or left out.",
                },
                "pause_at_limit": {"type": "boolean", "default": True},
                "alert_thresholds": {
                    "anyOf": [{"type": "array", "minItems": 1, "items": _FRACTION}, {"type": "null"}]
                },
            },
        ),
        "additionalProperties": False,
        # The limits the mode needs (brl is an alias of cost).
        "anyOf": [
            {
                "properties": {"mode": {"const": "tokens"}, "token_limit": _POSITIVE_INT},
                "required": ["token_limit"],
            },
            {
                "properties": {"mode": {"enum": ["cost", *MODE_ALIASES]}, "cost_limit": _POSITIVE_MONEY},
                "required": ["cost_limit"],
            },
            {
                "properties": {
                    "mode": {"const": "both"},
                    "token_limit": _POSITIVE_INT,
                    "cost_limit": _POSITIVE_MONEY,
                },
                "required": ["token_limit", "cost_limit"],
            },
        ],
    },
    "BudgetStatus": obj(
        list(STATUS_FIELDS),
        {
            "client_id": {"type": "string"},
            "mode": {"enum": ["tokens", "cost", "both", None], "description": "null: no budget"},
            "period": {"enum": ["daily", "weekly", "monthly", "none"]},
            "timezone": {"type": "string"},
            "currency": {"type": "string"},
            "token_limit": {"type": ["integer", "null"]},
            "cost_limit": _NULLABLE_MONEY,
            "credits": _MONEY,
            "tokens_used": {"type": "integer"},
            "cost_used": _MONEY,
            "tokens_percent": _NULLABLE_NUMBER,
            "cost_percent": _NULLABLE_NUMBER,
            "level": {"enum": ["ok", "warning", "critical", "exceeded"]},
            "paused": {"type": "boolean"},
            "pause_reason": {"type": ["string", "null"]},
            "pause_at_limit": {"type": "boolean"},
            "alert_thresholds": {"type": "array", "items": {"type": "number"}},
            "period_start": _TIME,
            "next_reset_at": {"anyOf": [_TIME, {"type": "null"}]},
            "spend_by_api_type": {"type": "object", "additionalProperties": _MONEY},
            "forecast": {
                "description": "the period's course at its burn rate so far; null: too soon to say",
                "anyOf": [
                    {
                        "type": "object",
                        "properties": {
                            "tokens_at_period_end": {"type": ["integer", "null"]},
                            "cost_at_period_end": _NULLABLE_MONEY,
                            "runs_out_at": {"anyOf": [_TIME, {"type": "null"}]},
                        },
                    },
                    {"type": "null"},
                ],
            },
            "limits": {"type": "array", "items": {"$ref": "#/components/schemas/LimitStatus"}},
        },
    ),
    "UsageEvent": obj(
        list(EVENT_FIELDS),
        {
            "request_id": {"type": "string"},
            "client_id": {"type": "string"},
            "end_user": {"type": ["string", "null"]},
            "conversation": {"type": ["string", "null"]},
            "api_type": {"enum": ["chat", "vision", "embeddings", "tts", "whisper", "image", "moderation"]},
            "model": {"type": "string"},
            "endpoint": {"type": "string"},
            "status": {"type": "integer"},
            **{
                name: {"type": "integer", "minimum": 0}
                for name in (
                    "input_tokens",
                    "output_tokens",
                    "cached_tokens",
                    "reasoning_tokens",
                    "characters",
                    "images",
                )
            },
            "audio_seconds": _MONEY,
            "cost_usd": _MONEY,
            "cost": _MONEY,
            "currency": {"type": "string"},
            "exchange_rate": _MONEY,
            "estimated": {"type": "boolean"},
            "unpriced": {"type": "boolean"},
            "created_at": _TIME,
            "markup": _MONEY,
            "service_tier": {"type": ["string", "null"]},
            "tool_calls": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
            "batch_id": {"type": ["string", "null"]},
            "price_source": {"type": ["string", "null"]},
            "upstream": {"type": ["string", "null"]},
            "latency_ms": {"type": ["integer", "null"], "minimum": 0},
        },
    ),
    "UsageReport": obj(
        ["group_by", "from", "to", "currency", "data"],
        {
            "group_by": {"enum": list(GROUPINGS)},
            "from": _TIME,
            "to": _TIME,
            # null when the rows are in several currencies (each row names its own)
            "currency": {"type": ["string", "null"]},
            "data": {
                "type": "array",
                "items": obj(
                    [
                        "key",
                        "requests",
                        "input_tokens",
                        "output_tokens",
                        "cost_usd",
                        "cost",
                        "list_cost",
                        "margin",
                        "currency",
                    ],
                    {
                        "key": {"type": "string"},
                        "requests": {"type": "integer"},
                        "input_tokens": {"type": "integer"},
                        "output_tokens": {"type": "integer"},
                        "cost_usd": _MONEY,
                        "cost": _MONEY,
                        "list_cost": _MONEY,
                        "margin": _MONEY,
                        "currency": {"type": ["string", "null"]},
                    },
                ),
            },
        },
    ),
    "Price": obj(
        [
            "model",
            "api_type",
            "tiers",
            "long_context",
            "tool_fees",
            "aliases",
            "source",
            "checked",
            "shutdown",
        ],
        {
            "model": {"type": "string"},
            "api_type": {"type": "string"},
            **_RATES,
            **{name: _NULLABLE_MONEY for name in ("per_million_characters", "per_minute")},
            "per_image": {"type": "object", "additionalProperties": _MONEY},
            "tiers": {"type": "object", "additionalProperties": obj([], _RATES)},
            "long_context": {
                "oneOf": [
                    {"type": "null"},
                    obj(
                        ["above", "rates"],
                        {
                            "above": {"type": "integer"},
                            "rates": {"type": "object", "additionalProperties": obj([], _RATES)},
                        },
                    ),
                ]
            },
            "tool_fees": {"type": "object", "additionalProperties": _MONEY},
            "regional_uplift": _NULLABLE_MONEY,
            "aliases": {"type": "array", "items": {"type": "string"}},
            "provider": {"type": "string"},
            "source": {"type": "string"},
            "checked": {"type": ["string", "null"], "format": "date"},
            "shutdown": {"type": ["string", "null"], "format": "date"},
        },
    ),
}
SCHEMAS.update(MONEY_SCHEMAS)
