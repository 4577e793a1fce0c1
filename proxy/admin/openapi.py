"""``GET /admin/openapi.json``: the OpenAPI 3.1 document of the admin and status API.

Its paths and operations are here, its schemas in :mod:`schemas`. Kept true
by a test that validates real responses against the document.
"""

from __future__ import annotations

from typing import Any

from taximeter.proxy.admin.schemas import SCHEMAS, obj
from taximeter.proxy.operations import GROUPINGS, MAX_EVENTS

__all__ = ["document"]


def _list(ref: str) -> dict[str, Any]:
    return obj(["data"], {"data": {"type": "array", "items": {"$ref": f"#/components/schemas/{ref}"}}})


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


# A date or an RFC 3339 time; empty is the default (the 30 whole UTC days before today, and today so far).
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
    "/admin/clients/{client_id}": {
        "parameters": [_path_param("client_id")],
        "get": _op(
            "A client, with its currency, markup and allowed models", _json(_ref("Client")), errors=("404",)
        ),
        "patch": _op(
            "Change a client's name, currency, markup or allowed models (fields left out stay)",
            _json(_ref("Client")),
            errors=("400", "404", "409", "413", "422"),
            requestBody=_body("ClientPatch"),
        ),
    },
    "/admin/clients/{client_id}/limits": {
        "parameters": [_path_param("client_id")],
        "get": _op(
            "Each limit with what is used and reserved in its window, and when it resets",
            _json(_ref("Limits")),
            errors=("400", "404"),
            parameters=_query(
                end_user={
                    "type": "string",
                    "maxLength": 256,
                    "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029]*$",
                }
            ),
        ),
        "put": _op(
            "Replace the client's limits as a set",
            _json(_ref("Limits")),
            errors=("400", "404", "409", "413", "422"),
            requestBody=_body("LimitsInput"),
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
    "/admin/budgets/{client_id}/credits": {
        "parameters": [_path_param("client_id")],
        "get": _op("A client's credits, newest first", _json(_list("Credit")), errors=("404",)),
        "post": _op(
            "Credit a budget: raises this period's cost limit and lifts a limit pause",
            _json(_ref("NewCredit"), "Created"),
            "201",
            ("400", "404", "409", "413", "422"),
            requestBody=_body("CreditInput"),
        ),
    },
    "/admin/clients/{client_id}/portal-links": {
        "parameters": [_path_param("client_id")],
        "post": _op(
            "A signed, expiring link to the client's read-only portal",
            _json(_ref("PortalLink"), "Created"),
            "201",
            ("400", "404", "413", "422"),
            requestBody={**_body("PortalLinkInput"), "required": False},
        ),
        "delete": _op(
            "Revoke every portal link of the client (it gets a new portal secret)",
            {"description": "Revoked"},
            "204",
            ("404",),
        ),
    },
    "/admin/rates": {
        "get": _op(
            "Exchange rates: the one in force of each currency, and their history",
            _json(_ref("Rates")),
            errors=("422",),
            parameters=_query(currency={"type": "string", "pattern": "^([A-Z]{3})?$"}),
        )
    },
    "/admin/rates/{currency}": {
        "parameters": [
            {
                "name": "currency",
                "in": "path",
                "required": True,
                # Any ISO 4217 code but USD, the currency of list prices (its rate is 1).
                "schema": {"type": "string", "pattern": "^([A-TV-Z][A-Z]{2}|U[A-RT-Z][A-Z]|US[A-CE-Z])$"},
            }
        ],
        "put": _op(
            "Put a rate (units per USD) in force for calls admitted from now on",
            _json(_ref("Rate")),
            errors=("400", "413", "422"),
            requestBody=_body("RateInput"),
        ),
    },
    "/admin/usage": {
        "get": _op(
            "Usage report",
            _json(_ref("UsageReport")),
            errors=("404", "422"),
            parameters=_query(
                client_id={"type": "string"},
                **{"from": _DAY, "to": _TO},
                group_by={"enum": list(GROUPINGS), "default": "api_type"},
            ),
        )
    },
    "/admin/usage/events": {
        "get": _op(
            "Usage events, newest first: a page as JSON (its `next` cursor gives the next page), "
            "or every matching event as CSV with the same columns",
            {
                "description": "OK",
                "content": {
                    "application/json": {
                        "schema": obj(
                            ["data", "next"],
                            {
                                "data": {"type": "array", "items": _ref("UsageEvent")},
                                "next": {"type": ["string", "null"]},
                            },
                        )
                    },
                    "text/csv": {"schema": {"type": "string"}},
                },
            },
            errors=("422",),
            parameters=_query(
                client_id={"type": "string"},
                limit={"type": "integer", "minimum": 1, "maximum": MAX_EVENTS, "default": 100},
                cursor={"type": "string", "description": "the `next` of the page before"},
                format={"enum": ["json", "csv"], "default": "json"},
            ),
        )
    },
    "/admin/pricing": {
        "parameters": _query(provider={"type": "string"}),
        "get": _op("The price catalog of one provider, or of every upstream's", _json(_list("Price"))),
    },
    "/admin/pricing/{model}": {
        "parameters": [_path_param("model"), *_query(upstream={"type": "string"})],
        "get": _op("What a model name resolves to at an upstream", _json(_ref("Price")), errors=("404",)),
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
            "schemas": SCHEMAS,
            "securitySchemes": {
                "adminToken": {"type": "http", "scheme": "bearer", "description": "The admin_token setting."},
                "virtualKey": {"type": "http", "scheme": "bearer", "description": "A tm_ key of the client."},
            },
        },
        "security": [{"adminToken": []}],
    }
