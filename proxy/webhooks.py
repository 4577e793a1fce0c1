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
import hashlib
import hmac
import logging
from dataclasses import dataclass
from datetime import timedelta

import aiohttp

from taximeter.pricing.models import OutboxItem
from taximeter.proxy.clock import Clock
from taximeter.store.base import Outbox, StoreUnavailable

__all__ = ["Webhook", "WebhookSender", "signature"]

log = logging.getLogger("taximeter.webhooks")

_LEASE = timedelta(seconds=60)
_BATCH = 50


@dataclass(frozen=True, slots=True)
class Webhook:
    url: str
    secret: str


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-Taximeter-Signature`` value of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


class WebhookSender:
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
        self._store = store
        self._session = session
        self._webhooks = {w.url: w for w in webhooks}
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._retry_max = retry_max_s

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
        backoff = min(2 ** (item.attempts + 1), self._retry_max)
        errors = "; ".join(e for e in results if e)
        await self._store.finish_alert(item, failed, now, now + timedelta(seconds=backoff), errors or None)
        if failed:
            log.warning(
                "webhook_failed", extra={"event_id": item.id, "failed": len(failed), "retry_in_s": backoff}
            )
            return 0
        return 1

    async def _post(self, webhook: Webhook, item: OutboxItem) -> str | None:
        body = item.payload.encode()
        headers = {
            "Content-Type": "application/json",
            "X-Taximeter-Event-Id": item.id,
            "X-Taximeter-Signature": signature(webhook.secret, body, int(self._clock().timestamp())),
        }
        try:
            async with self._session.post(
                webhook.url, data=body, headers=headers, timeout=self._timeout
            ) as resp:
                if 200 <= resp.status < 300:
                    return None
                return f"{webhook.url}: HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"{webhook.url}: {type(exc).__name__}"

    async def run_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.deliver_due()
            except StoreUnavailable as exc:
                log.warning("webhook_delivery_paused", extra={"error": str(exc)})
            except Exception:
                log.exception("webhook_delivery_failed")
