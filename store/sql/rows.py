"""Rows and models: the columns of each table and the conversions both ways,
through the backend's :class:`~taximeter.store.sql.core.Dialect`."""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

from taximeter.pricing.budgets import next_reset
from taximeter.pricing.limits import limits_from_json
from taximeter.pricing.models import ApiKey, BudgetConfig, BudgetState, Client, Limit, Terms, UsageEvent
from taximeter.pricing.money import from_nanos, to_nanos
from taximeter.store.sql.core import Dialect, Row

__all__ = [
    "BUDGET_COLUMNS",
    "CLIENT_COLUMNS",
    "EVENT_COLUMNS",
    "KEY_COLUMNS",
    "NEVER",
    "OUTBOX_COLUMNS",
    "budget_from_row",
    "budget_row",
    "client_from_row",
    "event_from_row",
    "event_row",
    "key_from_row",
    "terms_from_row",
    "terms_row",
]

EVENT_COLUMNS = (
    "request_id, client_id, end_user, conversation, api_type, model, endpoint, status, "
    "input_tokens, output_tokens, cached_tokens, reasoning_tokens, characters, audio_seconds, "
    "images, cost_usd, cost, currency, exchange_rate, estimated, unpriced, created_at, "
    "service_tier, tool_calls, price_source, upstream, latency_ms, markup, list_cost, "
    "batch_id"
)
BUDGET_COLUMNS = (
    "client_id, mode, token_limit, cost_limit, period, timezone, currency, pause_at_limit, "
    "alert_thresholds, period_start, tokens_used, cost_used, paused, pause_reason, version, alerts_fired, "
    "credit, next_reset"
)
CLIENT_COLUMNS = "id, name, created_at, currency, markup, models_allowed, limits"
KEY_COLUMNS = "prefix, client_id, key_hash, created_at, revoked_at"
OUTBOX_COLUMNS = "id, client_id, kind, payload, attempts, pending_urls"


# The next reset of a lifetime budget: never (NULL is a row an older release wrote).
NEVER = datetime(9999, 12, 31, tzinfo=UTC)


def budget_row(d: Dialect, state: BudgetState) -> list[Any]:
    c = state.config
    return [
        c.client_id,
        c.mode,
        c.token_limit,
        None if c.cost_limit is None else d.money_in(c.cost_limit),
        c.period,
        c.timezone,
        c.currency,
        c.pause_at_limit,
        json.dumps([str(t) for t in c.alert_thresholds]),
        d.time_in(state.period_start),
        state.tokens_used,
        d.money_in(from_nanos(state.cost_used_nanos)),
        state.paused,
        state.pause_reason,
        state.version,
        json.dumps(list(state.alerts_fired)),
        d.money_in(from_nanos(state.credit_nanos)),
        d.time_in(NEVER if (end := next_reset(state)) is None else end),
    ]


def budget_from_row(d: Dialect, row: Row) -> BudgetState:
    config = BudgetConfig(
        client_id=row["client_id"],
        mode=row["mode"],
        period=row["period"],
        timezone=row["timezone"],
        currency=row["currency"],
        token_limit=row["token_limit"],
        cost_limit=None if row["cost_limit"] is None else d.money_out(row["cost_limit"]),
        pause_at_limit=bool(row["pause_at_limit"]),
        alert_thresholds=_thresholds(row["alert_thresholds"]),
    )
    return BudgetState(
        config=config,
        period_start=d.time_out(row["period_start"]),
        tokens_used=int(row["tokens_used"]),
        cost_used_nanos=to_nanos(d.money_out(row["cost_used"])),
        paused=bool(row["paused"]),
        pause_reason=row["pause_reason"],
        version=int(row["version"]),
        alerts_fired=tuple(orjson.loads(row["alerts_fired"])),
        credit_nanos=to_nanos(d.money_out(row["credit"])),
    )


def event_row(d: Dialect, e: UsageEvent) -> list[Any]:
    return [
        e.request_id,
        e.client_id,
        e.end_user,
        e.conversation,
        e.api_type,
        e.model,
        e.endpoint,
        e.status,
        e.input_tokens,
        e.output_tokens,
        e.cached_tokens,
        e.reasoning_tokens,
        e.characters,
        d.money_in(e.audio_seconds),
        e.images,
        d.money_in(e.cost_usd),
        d.money_in(e.cost),
        e.currency,
        d.money_in(e.exchange_rate),
        e.estimated,
        e.unpriced,
        d.time_in(e.created_at),
        e.service_tier,
        orjson.dumps(dict(e.tool_calls)).decode(),
        e.price_source,
        e.upstream,
        e.latency_ms,
        d.money_in(e.markup),
        d.money_in(e.list_cost),
        e.batch_id,
    ]


def event_from_row(d: Dialect, r: Row) -> UsageEvent:
    return UsageEvent(
        request_id=r["request_id"],
        client_id=r["client_id"],
        end_user=r["end_user"],
        conversation=r["conversation"],
        api_type=r["api_type"],
        model=r["model"],
        endpoint=r["endpoint"],
        status=int(r["status"]),
        input_tokens=int(r["input_tokens"]),
        output_tokens=int(r["output_tokens"]),
        cached_tokens=int(r["cached_tokens"]),
        reasoning_tokens=int(r["reasoning_tokens"]),
        characters=int(r["characters"]),
        audio_seconds=d.money_out(r["audio_seconds"]),
        images=int(r["images"]),
        cost_usd=d.money_out(r["cost_usd"]),
        cost=d.money_out(r["cost"]),
        currency=r["currency"],
        exchange_rate=d.money_out(r["exchange_rate"]),
        estimated=bool(r["estimated"]),
        unpriced=bool(r["unpriced"]),
        created_at=d.time_out(r["created_at"]),
        service_tier=r["service_tier"],
        tool_calls=tuple(sorted(orjson.loads(r["tool_calls"]).items())),
        price_source=r["price_source"],
        upstream=r["upstream"],
        latency_ms=None if r["latency_ms"] is None else int(r["latency_ms"]),
        markup=Decimal(1) if r["markup"] is None else d.money_out(r["markup"]),
        batch_id=r["batch_id"],
    )


@functools.lru_cache(maxsize=1024)
def _thresholds(stored: str) -> tuple[Decimal, ...]:
    return tuple(Decimal(t) for t in orjson.loads(stored))


@functools.lru_cache(maxsize=1024)
def _stored_limits(stored: str) -> tuple[Limit, ...]:
    # Parsed and checked once per distinct set (clients of a plan share one): Limits are frozen.
    return limits_from_json({"limits": orjson.loads(stored)})


def client_from_row(d: Dialect, row: Row) -> Client:
    return Client(row["id"], row["name"], d.time_out(row["created_at"]), terms_from_row(d, row))


def terms_from_row(d: Dialect, row: Row, *, with_timezone: bool = False) -> Terms:
    allowed = row["models_allowed"]
    declared = row["limits"]
    return Terms(
        currency=row["currency"],
        markup=Decimal(1) if row["markup"] is None else d.money_out(row["markup"]),
        models_allowed=None if allowed is None else tuple(orjson.loads(allowed)),
        limits=() if declared is None else _stored_limits(declared),
        timezone=row["timezone"] if with_timezone else None,  # its budget's, when read with it
    )


def terms_row(d: Dialect, terms: Terms) -> list[Any]:
    allowed = terms.models_allowed
    return [
        terms.currency,
        d.money_in(terms.markup),
        None if allowed is None else json.dumps(list(allowed)),
    ]


def key_from_row(d: Dialect, row: Row, *, with_terms: bool = False) -> ApiKey:
    return ApiKey(
        prefix=row["prefix"],
        client_id=row["client_id"],
        key_hash=row["key_hash"],
        created_at=d.time_out(row["created_at"]),
        revoked=row["revoked_at"] is not None,
        terms=terms_from_row(d, row, with_timezone=True) if with_terms else Terms(),
    )
