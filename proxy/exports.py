"""Billing hand-off: every ledger event, as a CloudEvent, to each configured
``exports`` sink (the format OpenMeter ingests), from the durable outbox.

A batch is one POST of ``application/cloudevents-batch+json`` (a JSON array
of CloudEvents 1.0 in structured mode: ``id`` = the request id, ``source``
``taximeter``, ``type`` ``taximeter.usage``, ``subject`` = the client, ``time``
and ``data`` = the event's fields as ``/admin/usage/events`` gives them),
signed like webhooks (``X-Taximeter-Signature``). A 2xx forgets the batch; any
other answer, or none, makes it due again with doubling backoff (capped). A
sink that was down gets everything it missed; it has each id once unless an
answer was lost on the way, so it should deduplicate by ``id`` (OpenMeter does).
Each batch is leased while it is sent, so processes sending at once do not
send it twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp
import orjson

from taximeter.pricing.models import UsageEvent
from taximeter.pricing.times import rfc3339
from taximeter.proxy.api_shapes import event_json
from taximeter.proxy.clock import Clock
from taximeter.proxy.delivery import Sender
from taximeter.store.base import Exports

__all__ = ["CONTENT_TYPE", "ExportSender", "Sink", "cloudevent"]

log = logging.getLogger("taximeter.exports")

CONTENT_TYPE = "application/cloudevents-batch+json"
_LEASE = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class Sink:
    name: str
    url: str
    secret: str
    batch_size: int = 100


def cloudevent(event: UsageEvent) -> dict[str, Any]:
    """``event`` as a CloudEvent 1.0 (structured mode)."""
    return {
        "specversion": "1.0",
        "id": event.request_id,
        "source": "taximeter",
        "type": "taximeter.usage",
        "subject": event.client_id,
        "time": rfc3339(event.created_at),
        "datacontenttype": "application/json",
        "data": event_json(event),
    }


class ExportSender(Sender):
    kind = "export"

    def __init__(
        self,
        store: Exports,
        session: aiohttp.ClientSession,
        sinks: list[Sink],
        *,
        clock: Clock,
        timeout_s: float = 10.0,
        retry_max_s: float = 300.0,
    ) -> None:
        super().__init__(session, clock=clock, timeout_s=timeout_s, retry_max_s=retry_max_s)
        self._store = store
        self._sinks = sinks

    async def deliver_due(self) -> int:
        """Send every sink what it is owed and is due; the events delivered."""
        delivered = 0
        for sink in self._sinks:
            delivered += await self._deliver_to(sink)
        return delivered

    async def _deliver_to(self, sink: Sink) -> int:
        delivered = 0
        while True:
            events, attempts = await self._store.claim_exports(
                sink.name, self._clock(), sink.batch_size, _LEASE
            )
            if not events:
                return delivered
            body = orjson.dumps([cloudevent(e) for e in events])
            error = await self.post(sink.url, sink.secret, body, {"Content-Type": CONTENT_TYPE})
            now = self._clock()
            ids = [e.request_id for e in events]
            backoff = self.backoff(attempts)
            await self._store.finish_exports(
                sink.name, ids, delivered=error is None, retry_at=now + backoff, error=error
            )
            if error is not None:
                log.warning(
                    "export_failed",
                    extra={
                        "sink": sink.name,
                        "events": len(ids),
                        "error": error,
                        "retry_in_s": backoff.total_seconds(),
                    },
                )
                return delivered
            delivered += len(ids)
            if len(events) < sink.batch_size:
                return delivered
