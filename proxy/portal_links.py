"""Links to the tenant portal: signed, expiring, revocable (pure).

A link is ``/portal/<client>.<expires>.<signature>``: the client's id, the
Unix second it expires at, and an HMAC-SHA256 of both under the client's
portal secret (kept in the store). Nothing else is needed to check it, and
giving the client a new secret revokes every link made under the old one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = [
    "MAX_EXPIRES_S",
    "MIN_EXPIRES_S",
    "PortalToken",
    "make_token",
    "new_secret",
    "portal_url",
    "read_token",
]

MIN_EXPIRES_S = 60
MAX_EXPIRES_S = 366 * 24 * 3600  # a year: a link that lives longer should be made again
# One spelling per token: no leading zero in the expiry (it is signed as a number).
_TOKEN = re.compile(r"([a-z0-9][a-z0-9_-]{0,62})\.(0|[1-9][0-9]{0,11})\.([A-Za-z0-9_-]{43})")


@dataclass(frozen=True, slots=True)
class PortalToken:
    """A link's token as written; :meth:`signed_with` says whether it is genuine."""

    client_id: str
    expires: int  # Unix seconds
    signature: str

    @property
    def expires_at(self) -> datetime:
        return datetime.fromtimestamp(self.expires, UTC)

    def signed_with(self, secret: str) -> bool:
        """Whether ``secret`` made this token (compared in constant time)."""
        return hmac.compare_digest(self.signature, _sign(secret, self.client_id, self.expires))


def new_secret() -> str:
    """A fresh portal secret for a client."""
    return secrets.token_urlsafe(32)


def make_token(client_id: str, expires_at: datetime, secret: str) -> str:
    """The token of a link to ``client_id``'s portal, good until ``expires_at``."""
    expires = int(expires_at.timestamp())
    return f"{client_id}.{expires}.{_sign(secret, client_id, expires)}"


def portal_url(base: str, token: str) -> str:
    """The link a client's people open: ``base`` (no trailing slash) and the portal's path."""
    return f"{base}/portal/{token}"


def read_token(text: str) -> PortalToken | None:
    """The token's parts, or None when it is not shaped like one (nothing
    else is read from it: the signature decides)."""
    found = _TOKEN.fullmatch(text) if len(text) <= 128 else None
    if found is None:
        return None
    return PortalToken(found.group(1), int(found.group(2)), found.group(3))


def _sign(secret: str, client_id: str, expires: int) -> str:
    message = f"taximeter-portal\n{client_id}\n{expires}".encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
