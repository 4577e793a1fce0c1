"""JSON shapes of the public API (spec 7b). Money is a decimal string, times
RFC 3339 in UTC."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from taximeter.pricing import budgets
from taximeter.pricing.forecast import budget_forecast
from taximeter.pricing.models import ApiKey, BudgetState, Client, Credit, ExchangeRate, UsageEvent
from taximeter.pricing.money import from_nanos, money_text
from taximeter.pricing.times import rfc3339
from taximeter.store.base import ReportRow

__all__ = [
    "EVENT_FIELDS",
    "STATUS_FIELDS",
    "budget_json",
    "client_json",
    "credit_json",
    "event_json",
    "key_json",
    "rate_json",
    "report_row_json",
    "unbudgeted_json",
]

EVENT_FIELDS = (
    "request_id",
    "client_id",
    "end_user",
    "conversation",
    "api_type",
    "model",
    "endpoint",
    "status",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "characters",
    "audio_seconds",
    "images",
    "cost_usd",
    "cost",
    "currency",
    "exchange_rate",
    "estimated",
    "created_at",
    "markup",
    "service_tier",
    "tool_calls",
    "batch_id",
    "unpriced",
    "price_source",
    "upstream",
    "latency_ms",
)


STATUS_FIELDS = (
    "client_id",
    "mode",
    "period",
    "timezone",
    "currency",
    "token_limit",
    "cost_limit",
    "tokens_used",
    "cost_used",
    "tokens_percent",
    "cost_percent",
    "level",
    "paused",
    "pause_reason",
    "pause_at_limit",
    "alert_thresholds",
    "period_start",
    "next_reset_at",
    "spend_by_api_type",
)


def client_json(client: Client, default_currency: str | None = None) -> dict[str, Any]:
    terms = client.terms
    allowed = terms.models_allowed
    return {
        "id": client.id,
        "name": client.name,
        "created_at": rfc3339(client.created_at),
        "currency": terms.currency or default_currency,
        "markup": money_text(terms.markup),
        "models_allowed": None if allowed is None else list(allowed),
    }


def rate_json(rate: ExchangeRate) -> dict[str, Any]:
    return {"currency": rate.currency, "rate": money_text(rate.rate), "since": rfc3339(rate.since)}


def credit_json(credit: Credit) -> dict[str, Any]:
    return {
        "id": credit.id,
        "client_id": credit.client_id,
        "amount": money_text(credit.amount),
        "note": credit.note,
        "created_at": rfc3339(credit.created_at),
        "period_start": rfc3339(credit.period_start),
    }


def key_json(key: ApiKey) -> dict[str, Any]:
    return {
        "prefix": key.prefix,
        "client_id": key.client_id,
        "created_at": rfc3339(key.created_at),
        "revoked": key.revoked,
    }


def event_json(event: UsageEvent) -> dict[str, Any]:
    return {
        "request_id": event.request_id,
        "client_id": event.client_id,
        "end_user": event.end_user,
        "conversation": event.conversation,
        "api_type": event.api_type,
        "model": event.model,
        "endpoint": event.endpoint,
        "status": event.status,
        "input_tokens": event.input_tokens,
        "output_tokens": event.output_tokens,
        "cached_tokens": event.cached_tokens,
        "reasoning_tokens": event.reasoning_tokens,
        "characters": event.characters,
        "audio_seconds": money_text(event.audio_seconds),
        "images": event.images,
        "cost_usd": money_text(event.cost_usd),
        "cost": money_text(event.cost),
        "currency": event.currency,
        "exchange_rate": money_text(event.exchange_rate),
        "estimated": event.estimated,
        "created_at": rfc3339(event.created_at),
        "markup": money_text(event.markup),
        "service_tier": event.service_tier,
        "tool_calls": dict(event.tool_calls),
        "batch_id": event.batch_id,
        "unpriced": event.unpriced,
        "price_source": event.price_source,
        "upstream": event.upstream,
        "latency_ms": event.latency_ms,
    }


def budget_json(state: BudgetState, spend: dict[str, Decimal], now: datetime | None = None) -> dict[str, Any]:
    """A budget's status; with ``now``, its ``forecast`` (section 8)."""
    config = state.config
    tokens_pct, cost_pct = budgets.percents(state)
    return {
        "client_id": config.client_id,
        "mode": config.mode,
        "period": config.period,
        "timezone": config.timezone,
        "currency": config.currency,
        "token_limit": config.token_limit,
        "cost_limit": None if (limit := budgets.cost_limit(state)) is None else money_text(limit),
        "credits": money_text(from_nanos(state.credit_nanos)),
        "tokens_used": state.tokens_used,
        "cost_used": money_text(from_nanos(state.cost_used_nanos)),
        "tokens_percent": tokens_pct,
        "cost_percent": cost_pct,
        "level": budgets.level(state),
        "paused": state.paused,
        "pause_reason": state.pause_reason,
        "pause_at_limit": config.pause_at_limit,
        "alert_thresholds": [float(t) for t in config.alert_thresholds],
        "period_start": rfc3339(state.period_start),
        "next_reset_at": rfc3339(budgets.next_reset(state)),
        "spend_by_api_type": {k: money_text(v) for k, v in spend.items()},
        "forecast": None if now is None else forecast_json(state, now),
    }


def forecast_json(state: BudgetState, now: datetime) -> dict[str, Any] | None:
    """Where the budget is heading at its burn rate so far (None: too soon to say, or no end)."""
    course = budget_forecast(state, now)
    if course is None:
        return None
    return {
        "tokens_at_period_end": course.tokens_at_end,
        "cost_at_period_end": None if course.cost_at_end is None else money_text(course.cost_at_end),
        "runs_out_at": rfc3339(course.runs_out_at),
    }


def unbudgeted_json(
    client_id: str,
    *,
    currency: str,
    timezone: str,
    month: tuple[datetime, datetime],
    tokens: int,
    spend: dict[str, Decimal],
) -> dict[str, Any]:
    """The status of a client with no budget: metered, never blocked, with
    what it spent this calendar month."""
    return {
        "client_id": client_id,
        "mode": None,
        "period": "monthly",
        "timezone": timezone,
        "currency": currency,
        "token_limit": None,
        "cost_limit": None,
        "credits": "0",
        "tokens_used": tokens,
        "cost_used": money_text(sum(spend.values(), Decimal(0))),
        "tokens_percent": None,
        "cost_percent": None,
        "level": "ok",
        "paused": False,
        "pause_reason": None,
        "pause_at_limit": False,
        "alert_thresholds": [],
        "period_start": rfc3339(month[0]),
        "next_reset_at": rfc3339(month[1]),
        "spend_by_api_type": {k: money_text(v) for k, v in spend.items()},
    }


def report_row_json(row: ReportRow) -> dict[str, Any]:
    return {
        "key": row.key,
        "requests": row.requests,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "cost_usd": money_text(row.cost_usd),
        "cost": money_text(row.cost),
        "list_cost": money_text(row.list_cost),
        "margin": money_text(row.cost - row.list_cost),
        "currency": row.currency,
    }
