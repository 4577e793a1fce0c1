"""Dashboard logins: a session cookie and the CSRF token of its forms.

The cookie holds a random session id; the store keeps only its SHA-256, with
an expiry, so every process (and worker) knows the session and logging out
ends it everywhere. Each session belongs to the admin token it logged in
with: a new token ends every session of the old one. A form's CSRF token is
an HMAC of the session id, so it needs no storage and a page from one
session is useless in another. Wrong tokens are counted per address
(:class:`LoginThrottle`), so the admin token cannot be guessed at speed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from aiohttp import web

from taximeter.proxy.clock import Clock
from taximeter.store.base import DashboardSessions

__all__ = ["LOGIN_COOKIE", "SESSION_COOKIE", "LoginThrottle", "Session", "Sessions"]

SESSION_COOKIE = "taximeter_session"
LOGIN_COOKIE = "taximeter_login"  # the login form's own CSRF token (double submit)
_PATH = "/dashboard"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _csrf(secret: str) -> str:
    return hmac.new(secret.encode(), b"taximeter-dashboard-csrf", hashlib.sha256).hexdigest()


class LoginThrottle:
    """Wrong admin tokens per client address, in this process's memory: after
    ``max_failures`` within ``window_s``, the address may not try again until
    the oldest of them leaves the window. At most ``max_addresses`` are kept;
    past that the address that failed least recently is forgotten."""

    def __init__(
        self,
        clock: Clock,
        *,
        max_failures: int = 10,
        window_s: float = 300.0,
        max_addresses: int = 10_000,
    ) -> None:
        self._clock = clock
        self.max_failures = max_failures
        self._window = timedelta(seconds=window_s)
        self._max_addresses = max_addresses
        # address -> times of its failures in the window, oldest first; the dict
        # is ordered by last failure, so the first entry is the one to forget.
        self._failures: dict[str, list[datetime]] = {}

    def retry_after_s(self, remote: str | None) -> int | None:
        """Whole seconds until ``remote`` may try again; None when it may now."""
        now = self._clock()
        times = self._recent(_address(remote), now)
        if len(times) < self.max_failures:
            return None
        return max(1, math.ceil((times[0] + self._window - now).total_seconds()))

    def failed(self, remote: str | None) -> bool:
        """Count a wrong token from ``remote``; True when it reaches the limit."""
        now, address = self._clock(), _address(remote)
        times = self._recent(address, now)
        self._failures.pop(address, None)
        if len(self._failures) >= self._max_addresses:
            del self._failures[next(iter(self._failures))]
        self._failures[address] = [*times, now][-self.max_failures :]
        return len(times) + 1 == self.max_failures

    def succeeded(self, remote: str | None) -> None:
        """A right token: the address starts again from zero."""
        self._failures.pop(_address(remote), None)

    def _recent(self, address: str, now: datetime) -> list[datetime]:
        times = [t for t in self._failures.get(address, ()) if t > now - self._window]
        if not times:
            self._failures.pop(address, None)
        return times


def _address(remote: str | None) -> str:
    """Who to count: the IPv4 address, or the IPv6 /64 (one host usually holds
    a whole /64, so counting single IPv6 addresses would count nothing)."""
    try:
        ip = ipaddress.ip_address(remote or "")
    except ValueError:
        return remote or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # an IPv4 client of a dual-stack socket
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass(frozen=True)
class Session:
    id: str
    csrf: str


class Sessions:
    def __init__(
        self, store: DashboardSessions, admin_token: str, *, lifetime_s: float, clock: Clock
    ) -> None:
        self._store = store
        self._admin_token = admin_token
        self._scope = hmac.new(
            admin_token.encode(), b"taximeter-dashboard-session", hashlib.sha256
        ).hexdigest()
        self.lifetime_s = lifetime_s
        self._clock = clock
        self.throttle = LoginThrottle(clock)

    def token_matches(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self._admin_token.encode())

    async def start(self, response: web.StreamResponse, request: web.Request) -> Session:
        """Open a session and set its cookie on ``response``."""
        session_id = secrets.token_urlsafe(32)
        now = self._clock()
        await self._store.create_session(
            _digest(session_id), self._scope, now, now + timedelta(seconds=self.lifetime_s)
        )
        _set_cookie(response, request, SESSION_COOKIE, session_id, max_age=int(self.lifetime_s))
        response.del_cookie(LOGIN_COOKIE, path=_PATH)
        return Session(session_id, _csrf(session_id))

    async def current(self, request: web.Request) -> Session | None:
        """The request's live session, if its cookie names one."""
        session_id = request.cookies.get(SESSION_COOKIE)
        if not session_id or len(session_id) > 100:
            return None
        if not await self._store.session_valid(_digest(session_id), self._scope, self._clock()):
            return None
        return Session(session_id, _csrf(session_id))

    async def end(self, session: Session, response: web.StreamResponse) -> None:
        await self._store.end_session(_digest(session.id))
        response.del_cookie(SESSION_COOKIE, path=_PATH)

    @staticmethod
    def login_token(request: web.Request) -> str:
        """The login form's CSRF token: a random value sent both as a cookie and
        in the form (no session exists yet to derive it from)."""
        value = request.cookies.get(LOGIN_COOKIE, "")
        return value if 20 <= len(value) <= 100 else secrets.token_urlsafe(24)

    @staticmethod
    def set_login_token(request: web.Request, response: web.StreamResponse, value: str) -> None:
        _set_cookie(response, request, LOGIN_COOKIE, value, max_age=3600)

    @staticmethod
    def login_csrf_matches(request: web.Request, submitted: str) -> bool:
        expected = request.cookies.get(LOGIN_COOKIE, "")
        return bool(expected) and hmac.compare_digest(expected.encode(), submitted.encode())

    @staticmethod
    def csrf_matches(session: Session, submitted: str) -> bool:
        return hmac.compare_digest(session.csrf.encode(), submitted.encode())


def _set_cookie(
    response: web.StreamResponse, request: web.Request, name: str, value: str, *, max_age: int
) -> None:
    # Secure only where the browser reached us over HTTPS (directly or through
    # a TLS-terminating proxy); a plain-HTTP deployment on localhost must still log in.
    secure = request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"
    response.set_cookie(
        name, value, max_age=max_age, path=_PATH, httponly=True, samesite="Strict", secure=secure
    )
