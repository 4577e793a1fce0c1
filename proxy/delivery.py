"""What the webhook and export senders share: a signed POST, the backoff
between attempts, and the loop that runs them in the background."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from datetime import timedelta

import aiohttp

from taximeter.proxy.clock import Clock
from taximeter.store.base import StoreUnavailable

__all__ = ["Sender", "signature"]


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-Taximeter-Signature`` value of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


class Sender:
    """Delivers from an outbox: a subclass says what is due (:meth:`deliver_due`)."""

    kind = "delivery"  # names its log lines

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        clock: Clock,
        timeout_s: float = 10.0,
        retry_max_s: float = 300.0,
    ) -> None:
        self._session = session
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._retry_max = retry_max_s

    async def deliver_due(self) -> int:
        raise NotImplementedError

    def backoff(self, attempts: int) -> timedelta:
        """The wait after a failed attempt: doubling, capped."""
        return timedelta(seconds=min(2 ** (attempts + 1), self._retry_max))

    async def post(self, url: str, secret: str, body: bytes, headers: dict[str, str]) -> str | None:
        """POST ``body`` signed with ``secret``: None on a 2xx, else why not."""
        signed = {**headers, "X-Taximeter-Signature": signature(secret, body, int(self._clock().timestamp()))}
        try:
            async with self._session.post(url, data=body, headers=signed, timeout=self._timeout) as resp:
                return None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return type(exc).__name__

    async def run_forever(self, interval_s: float) -> None:
        log = logging.getLogger(f"taximeter.{self.kind}s")
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.deliver_due()
            except StoreUnavailable as exc:
                log.warning(f"{self.kind}_delivery_paused", extra={"error": str(exc)})
            except Exception:
                log.exception(f"{self.kind}_delivery_failed")
