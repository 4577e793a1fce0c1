"""What ``taximeter serve`` says at start-up: one summary once it listens, or
one line naming the cause when it cannot start (exit code 2)."""

from __future__ import annotations

import errno
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from taximeter.pricing.catalog import CatalogError
from taximeter.proxy.settings import Settings
from taximeter.store.base import StoreUnavailable

__all__ = ["STARTUP_FAILURES", "describe_store", "failure_line", "summary"]

# What a start-up can fail on that is the operator's to fix, not a bug.
STARTUP_FAILURES = (OSError, StoreUnavailable, CatalogError)


def summary(settings: Settings) -> str:
    """The lines printed once the proxy listens. No secret appears: URLs lose
    their passwords, keys are only said to be set or not."""
    base = f"http://{settings.host}:{settings.port}"
    gate = "in-process"
    if settings.redis_url:
        kind = "redis cluster" if settings.redis_cluster else "redis"
        gate = f"{kind} {_without_password(settings.redis_url)}"
    lines = [
        f"taximeter {version('taximeter')} listening on {base}/v1",
        f"  store      {describe_store(settings.database_url)}",
        f"  gate       {gate}",
    ]
    for upstream in settings.resolved_upstreams():
        key = "key set" if upstream.api_key is not None else "NO KEY: calls go upstream unauthenticated"
        lines.append(f"  upstream   {upstream.name} {_without_password(upstream.base_url)} ({key})")
    dashboard = f"{base}/dashboard" if settings.admin_token is not None else "off (set admin_token)"
    lines.append(f"  dashboard  {dashboard}")
    return "\n".join(lines)


def failure_line(exc: BaseException, settings: Settings) -> str:
    """One line naming why the proxy could not start."""
    address = f"{settings.host}:{settings.port}"
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return f"taximeter: cannot start: {address} is already in use"
    if isinstance(exc, OSError):
        return f"taximeter: cannot start: cannot listen on {address}: {exc.strerror or exc}"
    if isinstance(exc, StoreUnavailable):
        return f"taximeter: cannot start: store {describe_store(settings.database_url)} unavailable: {exc}"
    return f"taximeter: cannot start: price catalog: {exc}"


def describe_store(url: str) -> str:
    """The store a URL names, without its password."""
    if url.startswith("sqlite:///"):
        return f"sqlite {Path(url.removeprefix('sqlite:///')).absolute()}"
    return f"postgres {_without_password(url)}"


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
