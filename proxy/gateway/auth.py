"""Who is calling: virtual keys for the proxy, the admin token for the admin API."""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable

from aiohttp import web

from taximeter.pricing.models import ApiKey
from taximeter.proxy.errors import AdminAuthRequired, InvalidApiKey
from taximeter.proxy.gateway import keys
from taximeter.store.base import Directory
from taximeter.store.changes import Changes, NoChanges

__all__ = ["KeyCache", "authenticate", "require_admin", "require_bearer"]


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class KeyCache:
    """Keys found in the store, kept for ``ttl_s`` so a call costs no store
    round trip to authenticate. A key revoked through this process is dropped
    at once; one revoked elsewhere (another worker, the CLI) as soon as its
    ``changes`` tells (else within ``ttl_s``). Only keys that exist are kept.
    The first step of every call: where news of any change elsewhere is heard."""

    def __init__(
        self,
        store: Directory,
        *,
        ttl_s: float,
        changes: Changes | None = None,
        on_news: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._keys: dict[str, tuple[ApiKey, float]] = {}
        self._changes = changes or NoChanges()
        self._on_news = on_news  # what else this process drops when another changed something
        self._heard = 0  # changes heard so far

    def listen(self) -> None:
        """Hear of a change made elsewhere (a key, terms, a budget): nothing
        kept is trusted then. At the start of every call, and of every
        response of a Realtime session (whose key was looked up once)."""
        if self._changes.news():
            self._keys.clear()
            self._heard += 1
            self._on_news()

    async def find(self, prefix: str) -> ApiKey | None:
        self.listen()
        cached = self._keys.get(prefix)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        heard = self._heard
        key = await self._store.find_key(prefix)
        # A read begun before a change was heard may hold what it changed: used once, never kept.
        if key is not None and self._ttl_s > 0 and heard == self._heard:
            if len(self._keys) >= _CACHE_MAX:
                self._keys.clear()  # bounded: an unusual burst of keys just starts over
            self._keys[prefix] = (key, now + self._ttl_s)
        return key

    def forget(self, prefix: str) -> None:
        self._keys.pop(prefix, None)

    def forget_client(self, client_id: str) -> None:
        """Drop every kept key of a client whose terms changed: its next call reads them anew."""
        for prefix in [p for p, (key, _) in self._keys.items() if key.client_id == client_id]:
            del self._keys[prefix]


_CACHE_MAX = 100_000


async def authenticate(request: web.Request, cache: KeyCache) -> ApiKey:
    """The caller's active virtual key; raises InvalidApiKey (the key is never echoed)."""
    token = _bearer(request)
    if token is None:
        raise InvalidApiKey("missing API key: send Authorization: Bearer tm_...")
    if not keys.looks_like_key(token):
        raise InvalidApiKey("invalid API key: taximeter keys start with tm_")
    key = await cache.find(keys.key_prefix(token))
    if key is None or not keys.matches(token, key.key_hash) or key.revoked:
        raise InvalidApiKey("invalid or revoked API key")
    return key


def require_bearer(request: web.Request, secret: str, message: str) -> None:
    """Raise AdminAuthRequired unless the request's bearer token is ``secret``
    (compared in constant time)."""
    token = _bearer(request)
    if token is None or not hmac.compare_digest(token.encode(), secret.encode()):
        raise AdminAuthRequired(message)


def require_admin(request: web.Request, admin_token: str | None) -> None:
    """Raise unless the request carries the admin token."""
    if admin_token is None:
        raise AdminAuthRequired(
            "the admin API is disabled: set admin_token (TAXIMETER_ADMIN_TOKEN) to enable it",
            status=403,
        )
    require_bearer(request, admin_token, "missing or wrong admin token")
