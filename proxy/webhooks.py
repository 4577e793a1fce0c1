"""Delivery of budget events from the outbox to the configured webhooks.

Every body is signed: ``X-Taximeter-Signature: t=<unix time>,v1=<hex>``, where
``v1`` is HMAC-SHA256 with the webhook's secret over ``"<t>.<body>"``;
``X-Taximeter-Event-Id`` lets receivers deduplicate. An event is marked
delivered once every webhook answered 2xx; the others are retried with
doubling backoff (capped) until they do. Each attempt leases the event, so
processes sending at once do not send it twice.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta

import aiohttp

from taximeter.pricing.models import OutboxItem
from taximeter.proxy.clock import Clock
from taximeter.proxy.delivery import Sender, signature
from taximeter.store.base import Outbox

__all__ = ["Webhook", "WebhookSender", "signature"]  # signature: kept where tests and users look for it

log = logging.getLogger("taximeter.webhooks")

_LEASE = timedelta(seconds=60)
_BATCH = 50


@dataclass(frozen=True, slots=True)
class Webhook:
    url: str
    secret: str


class WebhookSender(Sender):
    kind = "webhook"

    def __init__(
        self,
        store: Outbox,
        session: aiohttp.ClientSession,
        webhooks: list[Webhook],
        *,
        clock: Clock,
        timeout_s: float = 10.0,
        retry_max_s: float = 300.0,
    ) -> None:
        super().__init__(session, clock=clock, timeout_s=timeout_s, retry_max_s=retry_max_s)
        self._store = store
        self._webhooks = {w.url: w for w in webhooks}

    async def deliver_due(self) -> int:
        """Send every event that is due; the number delivered to all its webhooks."""
        if not self._webhooks:
            return 0
        delivered = 0
        while True:
            items = await self._store.claim_alerts(self._clock(), _BATCH, _LEASE)
            for item in items:
                delivered += await self._deliver(item)
            if len(items) < _BATCH:
                return delivered

    async def _deliver(self, item: OutboxItem) -> int:
        urls = [u for u in (item.pending_urls or self._webhooks) if u in self._webhooks]
        results = await asyncio.gather(*(self._post(self._webhooks[u], item) for u in urls))
        failed = [u for u, error in zip(urls, results, strict=True) if error is not None]
        now = self._clock()
        backoff = self.backoff(item.attempts)
        errors = "; ".join(f"{u}: {e}" for u, e in zip(urls, results, strict=True) if e)
        await self._store.finish_alert(item, failed, now, now + backoff, errors or None)
        if failed:
            log.warning(
                "webhook_failed",
                extra={"event_id": item.id, "failed": len(failed), "retry_in_s": backoff.total_seconds()},
            )
            return 0
        return 1

    async def _post(self, webhook: Webhook, item: OutboxItem) -> str | None:
        headers = {"Content-Type": "application/json", "X-Taximeter-Event-Id": item.id}
        return await self.post(webhook.url, webhook.secret, item.payload.encode(), headers)
