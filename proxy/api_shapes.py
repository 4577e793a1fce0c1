"""JSON shapes of the public API (spec 7b). Money is a decimal string, times
RFC 3339 in UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from taximeter.pricing import budgets
from taximeter.pricing.models import ApiKey, BudgetState, Client, UsageEvent
from taximeter.pricing.money import from_nanos, money_text
from taximeter.store.base import ReportRow

__all__ = [
    "EVENT_FIELDS",
    "STATUS_FIELDS",
    "budget_json",
    "client_json",
    "event_json",
    "key_json",
    "report_row_json",
    "rfc3339",
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


def rfc3339(when: datetime | None) -> str | None:
    if when is None:
        return None
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def client_json(client: Client) -> dict[str, Any]:
    return {"id": client.id, "name": client.name, "created_at": rfc3339(client.created_at)}


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
        "markup": "1",  # no markup is applied yet
        "service_tier": event.service_tier,
        "tool_calls": dict(event.tool_calls),
        "batch_id": None,  # no call is part of a batch yet
        "unpriced": event.unpriced,
        "price_source": event.price_source,
        "upstream": event.upstream,
        "latency_ms": event.latency_ms,
    }


def budget_json(state: BudgetState, spend: dict[str, Decimal]) -> dict[str, Any]:
    config = state.config
    tokens_pct, cost_pct = budgets.percents(state)
    return {
        "client_id": config.client_id,
        "mode": config.mode,
        "period": config.period,
        "timezone": config.timezone,
        "currency": config.currency,
        "token_limit": config.token_limit,
        "cost_limit": None if config.cost_limit is None else money_text(config.cost_limit),
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
    }


def report_row_json(row: ReportRow) -> dict[str, Any]:
    return {
        "key": row.key,
        "requests": row.requests,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "cost_usd": money_text(row.cost_usd),
        "cost": money_text(row.cost),
    }
