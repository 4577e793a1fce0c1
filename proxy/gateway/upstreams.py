"""Upstream selection: the first upstream whose model patterns match."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from taximeter.proxy.settings import UpstreamSettings

__all__ = ["Upstream", "Upstreams"]


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    base_url: str
    authorization: str | None  # the full header value; never logged
    provider: str  # whose prices price its calls
    regional: bool = False  # a data-residency endpoint: prices carry the regional uplift

    def credentials(self) -> dict[str, str]:
        """The header that authenticates a call to it (none without a key)."""
        return {} if self.authorization is None else {"Authorization": self.authorization}

    def url(self, path: str, query: str) -> str:
        """The upstream URL of a proxied ``/v1/...`` path."""
        tail = path.removeprefix("/v1")
        return f"{self.base_url}{tail}" + (f"?{query}" if query else "")


class Upstreams:
    def __init__(self, configured: list[UpstreamSettings], infer_provider: Callable[[str], str]) -> None:
        self._routes = [
            (
                u.models,
                Upstream(
                    name=u.name,
                    base_url=u.base_url,
                    authorization=None if u.api_key is None else f"Bearer {u.api_key.get_secret_value()}",
                    provider=u.provider or infer_provider(u.base_url),
                    regional=u.regional,
                ),
            )
            for u in configured
        ]

    def all(self) -> list[Upstream]:
        return [upstream for _, upstream in self._routes]

    def named(self, name: str) -> Upstream | None:
        return next((upstream for _, upstream in self._routes if upstream.name == name), None)

    def pick(self, model: str | None) -> Upstream:
        """The upstream serving ``model``; the first one when no pattern matches."""
        if model:
            for patterns, upstream in self._routes:
                if any(fnmatchcase(model, p) for p in patterns):
                    return upstream
        return self._routes[0][1]
