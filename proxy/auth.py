"""Who is calling: virtual keys for the proxy, the admin token for the admin API."""

from __future__ import annotations

import hmac

from aiohttp import web

from taximeter.proxy import keys
from taximeter.proxy.errors import AdminAuthRequired, InvalidApiKey
from taximeter.store.base import Store
from taximeter.store.models import ApiKey

__all__ = ["authenticate", "require_admin"]


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def authenticate(request: web.Request, store: Store) -> ApiKey:
    """The caller's active virtual key; raises InvalidApiKey (the key is never echoed)."""
    token = _bearer(request)
    if token is None:
        raise InvalidApiKey("missing API key: send Authorization: Bearer tm_...")
    if not keys.looks_like_key(token):
        raise InvalidApiKey("invalid API key: taximeter keys start with tm_")
    key = await store.find_key(keys.key_prefix(token))
    if key is None or not keys.matches(token, key.key_hash) or key.revoked:
        raise InvalidApiKey("invalid or revoked API key")
    return key


def require_admin(request: web.Request, admin_token: str | None) -> None:
    """Raise unless the request carries the admin token (compared in constant time)."""
    if admin_token is None:
        raise AdminAuthRequired(
            "the admin API is disabled: set admin_token (TAXIMETER_ADMIN_TOKEN) to enable it",
            status=403,
        )
    token = _bearer(request)
    if token is None or not hmac.compare_digest(token.encode(), admin_token.encode()):
        raise AdminAuthRequired("missing or wrong admin token")
