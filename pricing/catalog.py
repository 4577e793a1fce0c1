"""The price catalog: which rates a model name resolves to.

Catalogs stack, lowest first, each overriding the one before for the models
it names: every provider's prices from ``genai-prices`` (:mod:`.genai`), the
shipped ``prices.toml`` (OpenAI list prices, each checked against a public
source), then the operator's ``pricing_files``. Prices belong to a provider
(``openai``, ``anthropic``, ``groq``, ...): a model is priced from the prices
of the provider its upstream is. A name resolves exactly; then without a
date suffix (``-2024-08-06``, ``-0806``) when the dated name is not listed
itself; then through an alias a catalog declares. Nothing else: no prefix
guessing. Anything else is unpriced.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import date
from importlib import resources
from pathlib import Path

from taximeter.pricing.catalog_files import CatalogError, parse_litellm, parse_toml
from taximeter.pricing.genai import load_genai, provider_for_url
from taximeter.pricing.rates import ModelPrice

__all__ = [
    "DEFAULT_PROVIDER",
    "SHIPPED",
    "Catalog",
    "CatalogError",
    "ModelPrice",
    "load_catalog",
    "problems",
    "warnings",
]

SHIPPED = "prices.toml"
DEFAULT_PROVIDER = "openai"
_DATE_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")


class Catalog:
    def __init__(
        self,
        prices: Iterable[ModelPrice],
        refused: Iterable[str] = (),
        url_patterns: Iterable[tuple[str, str]] = (),
        notes: Iterable[str] = (),
    ) -> None:
        self._prices = {(p.provider, p.model): p for p in prices}
        self._aliases = {(p.provider, alias): p for p in self._prices.values() for alias in p.aliases}
        self._any = {name: p for (_, name), p in (*self._aliases.items(), *self._prices.items())}
        self.refused = tuple(refused)  # models of a catalog left unpriced, and why
        self.url_patterns = tuple(url_patterns)  # (provider, regex of its API base URL)
        self.notes = tuple(notes)  # models of the base catalog left out, and why

    def __len__(self) -> int:
        return len(self._prices)

    def __iter__(self) -> Iterator[ModelPrice]:
        return iter(self._prices.values())

    def merged(self, other: Catalog) -> Catalog:
        """A catalog where ``other``'s models replace or extend this one's. A
        model replaced keeps the names it answered to, unless the new entry
        declares its own."""
        replaced = []
        for key, price in other._prices.items():
            old = self._prices.get(key)
            replaced.append(replace(price, aliases=old.aliases) if old and not price.aliases else price)
        return Catalog(
            [*self._prices.values(), *replaced],
            (*self.refused, *other.refused),
            (*self.url_patterns, *other.url_patterns),
            (*self.notes, *other.notes),
        )

    def resolve(self, model: str, provider: str = DEFAULT_PROVIDER) -> ModelPrice | None:
        """The price entry for ``model`` at ``provider``, or None when no rule names it."""
        found = self._prices.get((provider, model)) or self._aliases.get((provider, model))
        if found is not None:  # listed itself, as a model or a declared name of one
            return found
        undated = _DATE_SUFFIX.sub("", model)
        if undated == model:
            return None
        return self._prices.get((provider, undated)) or self._aliases.get((provider, undated))

    def canonical(self, model: str) -> str | None:
        """The model a name stands for at openai, else at any provider that
        lists it exactly; None when no catalog names it."""
        price = self.resolve(model) or self._any.get(model)
        return None if price is None else price.model

    def provider_for(self, base_url: str) -> str:
        """The provider an upstream at ``base_url`` is (``openai`` when no
        catalog knows its address: any OpenAI-compatible server)."""
        return provider_for_url(base_url, self.url_patterns) or DEFAULT_PROVIDER


def load_catalog(*paths: Path, today: date) -> Catalog:
    """The catalogs as of ``today``: every provider's from ``genai-prices``,
    the shipped one over it, and each file in ``paths`` over both, in order.

    A ``.json`` file is read in LiteLLM's ``model_prices_and_context_window.json``
    format; anything else as taximeter TOML. Raises CatalogError.
    """
    base = load_genai(today)
    catalog = Catalog(base.models, url_patterns=base.url_patterns, notes=base.refused)
    shipped = resources.files("taximeter.pricing").joinpath(SHIPPED).read_text("utf-8")
    catalog = catalog.merged(Catalog(parse_toml(shipped, source=SHIPPED)))
    for path in paths:
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise CatalogError(f"cannot read price catalog {path}: {exc.strerror}") from exc
        if path.suffix == ".json":
            models, refused = parse_litellm(text, str(path))
            catalog = catalog.merged(Catalog(models, refused))
        else:
            catalog = catalog.merged(Catalog(parse_toml(text, str(path))))
    return catalog


_NEEDS = {
    "chat": ("input", "output"),
    "embeddings": ("input",),
}


def problems(catalog: Catalog) -> list[str]:
    """What makes a catalog unfit to bill with: a model missing a rate its
    api_type needs, or a tier without its own input and output rates.
    (Negative and malformed prices are refused on load.)"""
    found = []
    for price in sorted(catalog, key=lambda p: p.model):
        missing = [name for name in _NEEDS.get(price.api_type, ()) if getattr(price.rates, name) is None]
        if price.api_type == "tts" and price.per_million_characters is None and price.rates.output is None:
            missing.append("per_million_characters or output")
        if price.api_type == "whisper" and price.per_minute is None and price.rates.empty:
            missing.append("per_minute or token rates")
        if price.api_type == "image" and not price.per_image and price.rates.empty:
            missing.append("per_image or token rates")
        if price.api_type == "storage" and price.fee("storage_mib_day") is None:
            missing.append("tool_fees.storage_mib_day (USD per MiB kept a day)")
        if missing:
            found.append(f"{price.model} ({price.api_type}): no {', '.join(missing)}")
    found.extend(f"refused: {reason}" for reason in catalog.refused)
    return found


def warnings(catalog: Catalog, today: date) -> list[str]:
    """What an operator should know but that does not stop billing: models
    past their shutdown date, and models of the base catalog left unpriced."""
    return [
        f"{p.model}: shut down upstream on {p.shutdown.isoformat()} ({p.source})"
        for p in sorted(catalog, key=lambda p: p.model)
        if p.shutdown is not None and p.shutdown <= today
    ] + [f"unpriced: {note}" for note in catalog.notes]
