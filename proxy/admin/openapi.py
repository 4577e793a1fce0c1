"""``GET /admin/openapi.json``: the OpenAPI 3.1 document of the admin and status API.

Kept true by a test that validates real responses against these schemas.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import available_timezones

from taximeter.pricing.budgets import MAX_COST_LIMIT, MAX_TOKEN_LIMIT, MODE_ALIASES, MODES, PERIODS
from taximeter.proxy.api_shapes import EVENT_FIELDS, STATUS_FIELDS
from taximeter.proxy.operations import GROUPINGS, MAX_EVENTS

__all__ = ["document"]

_MONEY = {"type": "string", "pattern": r"^-?\d+(\.\d+)?$", "description": "A decimal amount, never a float."}
_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_MONEY = {"anyOf": [_MONEY, {"type": "null"}]}
_NULLABLE_NUMBER = {"type": ["number", "null"]}
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
# Python's str.strip() also takes \x1c-\x1f for blanks, which \s does not.
_NAME = {"type": "string", "minLength": 1, "maxLength": 200, "pattern": r"[^\s\x1c-\x1f]"}


def _obj(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


_SCHEMAS: dict[str, Any] = {
    "Error": _obj(
        ["error"],
        {
            "error": _obj(
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
    "Client": _obj(
        ["id", "name", "created_at"],
        {"id": {"type": "string"}, "name": {"type": "string"}, "created_at": _TIME},
    ),
    "ClientInput": _obj(
        ["id"],
        {
            "id": {"type": "string", "pattern": _SLUG},
            "name": {
                "anyOf": [_NAME, {"type": "null"}],
                "description": "Not blank, at most 200 characters; the id when left out.",
            },
        },
    ),
    "Key": _obj(
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
            _obj(["key"], {"key": {"type": "string", "pattern": "^tm_", "description": "Shown once."}}),
        ]
    },
    "BudgetInput": {
        **_obj(
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
    "BudgetStatus": _obj(
        list(STATUS_FIELDS),
        {
            "client_id": {"type": "string"},
            "mode": {"enum": ["tokens", "cost", "both"]},
            "period": {"enum": ["daily", "weekly", "monthly", "none"]},
            "timezone": {"type": "string"},
            "currency": {"type": "string"},
            "token_limit": {"type": ["integer", "null"]},
            "cost_limit": _NULLABLE_MONEY,
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
        },
    ),
    "UsageEvent": _obj(
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
        },
    ),
    "UsageReport": _obj(
        ["group_by", "from", "to", "currency", "data"],
        {
            "group_by": {"enum": list(GROUPINGS)},
            "from": _TIME,
            "to": _TIME,
            "currency": {"type": "string"},
            "data": {
                "type": "array",
                "items": _obj(
                    ["key", "requests", "input_tokens", "output_tokens", "cost_usd", "cost"],
                    {
                        "key": {"type": "string"},
                        "requests": {"type": "integer"},
                        "input_tokens": {"type": "integer"},
                        "output_tokens": {"type": "integer"},
                        "cost_usd": _MONEY,
                        "cost": _MONEY,
                    },
                ),
            },
        },
    ),
    "Price": _obj(
        ["model", "api_type"],
        {
            "model": {"type": "string"},
            "api_type": {"type": "string"},
            **{
                name: _NULLABLE_MONEY
                for name in (
                    "input",
                    "cached_input",
                    "output",
                    "audio_input",
                    "audio_output",
                    "image_input",
                    "per_million_characters",
                    "per_minute",
                )
            },
            "per_image": {"type": "object", "additionalProperties": _MONEY},
        },
    ),
}


def _list(ref: str) -> dict[str, Any]:
    return _obj(["data"], {"data": {"type": "array", "items": {"$ref": f"#/components/schemas/{ref}"}}})


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_ERRORS = {
    status: _json(_ref("Error"), text)
    for status, text in (
        ("400", "Malformed body: not JSON, or not a JSON object"),
        ("401", "Missing or wrong token"),
        ("403", "The admin API is disabled (no admin_token set)"),
        ("404", "Not found"),
        ("409", "Conflict: it exists already"),
        ("413", "Body too large"),
        ("422", "Invalid input; param names the field"),
    )
}
_ADMIN = ("401", "403")  # every admin operation


def _op(
    summary: str, ok: dict[str, Any], status: str = "200", errors: tuple[str, ...] = (), **extra: Any
) -> dict[str, Any]:
    """An operation answering ``ok`` with ``status``, or one of the ``errors``."""
    failures = {code: _ERRORS[code] for code in sorted({*_ADMIN, *errors})}
    return {"summary": summary, "responses": {status: ok, **failures}, **extra}


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(**schemas: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": n, "in": "query", "required": False, "schema": s} for n, s in schemas.items()]


# A date or an RFC 3339 time; empty is the default (the last 30 days, up to now).
_DAY: dict[str, Any] = {
    "anyOf": [{"type": "string", "format": "date"}, {"type": "string", "format": "date-time"}, {"const": ""}]
}
_TO: dict[str, Any] = {**_DAY, "description": "After from (422 otherwise); a bare date is that whole day."}


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


_PATHS: dict[str, Any] = {
    "/budget/status": {
        "get": {
            "summary": "The calling client's budget (virtual key)",
            "responses": {"200": _json(_ref("BudgetStatus")), "401": _ERRORS["401"], "404": _ERRORS["404"]},
            "security": [{"virtualKey": []}],
        }
    },
    "/admin/clients": {
        "get": _op("List clients", _json(_list("Client"))),
        "post": _op(
            "Create a client",
            _json(_ref("Client"), "Created"),
            "201",
            ("400", "409", "413", "422"),
            requestBody=_body("ClientInput"),
        ),
    },
    "/admin/clients/{client_id}/keys": {
        "parameters": [_path_param("client_id")],
        "get": _op("List a client's keys", _json(_list("Key")), errors=("404",)),
        "post": _op(
            "Create a key (the key is in this answer only)",
            _json(_ref("NewKey"), "Created"),
            "201",
            ("404", "409"),
        ),
    },
    "/admin/keys/{prefix}": {
        "parameters": [_path_param("prefix")],
        "delete": _op("Revoke a key", _json(_ref("Key")), errors=("404",)),
    },
    "/admin/budgets": {"get": _op("Every budget's status", _json(_list("BudgetStatus")))},
    "/admin/budgets/{client_id}": {
        "parameters": [_path_param("client_id")],
        "get": _op("A budget's status", _json(_ref("BudgetStatus")), errors=("404",)),
        "put": _op(
            "Create or replace a budget",
            _json(_ref("BudgetStatus")),
            errors=("400", "404", "413", "422"),
            requestBody=_body("BudgetInput"),
        ),
        "delete": _op("Delete a budget", {"description": "Deleted"}, "204", ("404",)),
    },
    **{
        f"/admin/budgets/{{client_id}}/{action}": {
            "parameters": [_path_param("client_id")],
            "post": _op(f"{action.title()} a budget", _json(_ref("BudgetStatus")), errors=("404",)),
        }
        for action in ("reset", "pause", "resume")
    },
    "/admin/usage": {
        "get": _op(
            "Usage report",
            _json(_ref("UsageReport")),
            errors=("422",),
            parameters=_query(
                client_id={"type": "string"},
                **{"from": _DAY, "to": _TO},
                group_by={"enum": list(GROUPINGS), "default": "api_type"},
            ),
        )
    },
    "/admin/usage/events": {
        "get": _op(
            "Usage events, newest first (JSON or CSV with the same columns)",
            {
                "description": "OK",
                "content": {
                    "application/json": {"schema": _list("UsageEvent")},
                    "text/csv": {"schema": {"type": "string"}},
                },
            },
            errors=("422",),
            parameters=_query(
                client_id={"type": "string"},
                limit={"type": "integer", "minimum": 1, "maximum": MAX_EVENTS, "default": 100},
                format={"enum": ["json", "csv"], "default": "json"},
            ),
        )
    },
    "/admin/pricing": {"get": _op("The price catalog", _json(_list("Price")))},
    "/admin/pricing/{model}": {
        "parameters": [_path_param("model")],
        "get": _op("What a model name resolves to", _json(_ref("Price")), errors=("404",)),
    },
    "/admin/openapi.json": {
        "get": {
            "summary": "This document (served without a token: it holds no data)",
            "responses": {"200": _json({"type": "object"})},
            "security": [],
        }
    },
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "taximeter admin and status API",
            "version": "1",
            "description": "Money is a decimal string; times are RFC 3339 in UTC. Errors use OpenAI's shape.",
        },
        "paths": _PATHS,
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "adminToken": {"type": "http", "scheme": "bearer", "description": "The admin_token setting."},
                "virtualKey": {"type": "http", "scheme": "bearer", "description": "A tm_ key of the client."},
            },
        },
        "security": [{"adminToken": []}],
    }
