"""The ``budget.forecast`` webhook (spec section 8): once a period, when a
budget is forecast, at its burn rate so far, to run out before its period
ends. Looked at as each event is recorded; put in the outbox once per
period however many processes see it (the outbox keeps one per id)."""

from __future__ import annotations

import logging

import orjson

from taximeter.pricing import budgets
from taximeter.pricing.forecast import budget_forecast
from taximeter.pricing.models import BudgetAlert, BudgetState
from taximeter.pricing.money import money_text
from taximeter.pricing.times import rfc3339
from taximeter.proxy.clock import Clock
from taximeter.store.base import Outbox, StoreUnavailable

__all__ = ["ForecastAlerts"]

log = logging.getLogger("taximeter.budget")

_REMEMBERED = 10_000  # periods this process remembers having looked at to the end


class ForecastAlerts:
    def __init__(self, outbox: Outbox, clock: Clock) -> None:
        self._outbox = outbox
        self._clock = clock
        self._told: set[tuple[str, str]] = set()  # (client, period start) already in the outbox

    async def consider(self, state: BudgetState) -> None:
        """``state`` was just written: tell, once this period, if it will run out early."""
        told = (state.client_id, state.period_start.isoformat())
        if told in self._told or state.paused:  # paused: it has run out, and said so
            return
        now = self._clock()
        course = budget_forecast(state, now)
        end = budgets.next_reset(state)
        if course is None or course.runs_out_at is None or end is None or course.runs_out_at >= end:
            return
        if len(self._told) >= _REMEMBERED:
            self._told.clear()
        self._told.add(told)
        alert_id = f"{state.client_id}:forecast:{told[1]}"
        payload = budgets.alert_payload(BudgetAlert("forecast", state.client_id), state, alert_id, now)
        payload |= {
            "runs_out_at": rfc3339(course.runs_out_at),
            "next_reset_at": rfc3339(end),
            "tokens_at_period_end": course.tokens_at_end,
            "cost_at_period_end": None if course.cost_at_end is None else money_text(course.cost_at_end),
        }
        try:
            fired = await self._outbox.enqueue_alert_once(
                alert_id, state.client_id, "budget.forecast", orjson.dumps(payload).decode(), now
            )
        except StoreUnavailable as exc:  # the next event recorded tries again
            self._told.discard(told)
            log.warning("forecast_alert_failed", extra={"client": state.client_id, "error": str(exc)})
            return
        if fired:
            log.info(
                "budget_forecast", extra={"client": state.client_id, "runs_out_at": payload["runs_out_at"]}
            )
