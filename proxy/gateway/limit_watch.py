"""What a settled call tells of its client's limits: the
``taximeter_limit_used_ratio`` gauge of each per-client limit, and each alert
threshold (80%, 90%, 100%) a per-client spend cap of a day or longer crosses,
put in the outbox once per window however many processes see it, logged,
counted and sent to the webhooks as ``limit.threshold``."""

from __future__ import annotations

import logging
from decimal import Decimal

import orjson

from taximeter.pricing import limits
from taximeter.pricing.models import Hold, UsageEvent
from taximeter.pricing.money import to_nanos
from taximeter.proxy.services import Services
from taximeter.store.base import StoreUnavailable

__all__ = ["watch_limits"]

log = logging.getLogger("taximeter.budget")


async def watch_limits(services: Services, event: UsageEvent, counted: list[tuple[Hold, int]]) -> None:
    tokens, cost_nanos = event.tokens, to_nanos(event.cost)
    for hold, used in counted:
        limit = hold.limit
        if limit.per != "client":
            continue  # per end user: no series per end user
        services.metrics.limit_used(event.client_id, limit.name, used / limit.limit)
        for threshold in limits.crossed(hold, used, hold.used_by(tokens, cost_nanos)):
            await _alert(services, event.client_id, hold, threshold, used)


async def _alert(services: Services, client_id: str, hold: Hold, threshold: Decimal, used: int) -> None:
    now = services.meter.clock()
    alert_id = limits.alert_id(client_id, hold, threshold)
    payload = limits.alert_payload(client_id, hold, threshold, used, alert_id, now)
    try:
        fired = await services.meter.store.enqueue_alert_once(
            alert_id, client_id, "limit.threshold", orjson.dumps(payload).decode(), now
        )
    except StoreUnavailable as exc:  # the next call that crosses it, or none: never the call itself
        log.warning(
            "limit_alert_failed", extra={"client": client_id, "limit": hold.limit.name, "error": str(exc)}
        )
        return
    if fired:
        threshold_text = format(threshold.normalize(), "f")
        services.metrics.limit_alert(client_id, hold.limit.name, threshold_text)
        log.info(
            "limit_alert", extra={"client": client_id, "limit": hold.limit.name, "threshold": threshold_text}
        )
