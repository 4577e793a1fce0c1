"""The price catalog: which rates a model name resolves to.

Catalogs stack, lowest first, each overriding the one before for the models
it names: the shipped ``prices.toml`` (OpenAI list prices, each checked
against a public source), then the operator's ``pricing_files``. A name
resolves exactly; then without a date suffix (``-2024-08-06``, ``-0806``)
when the dated name is not listed itself; then through an alias a catalog
declares. Nothing else: no prefix guessing. Anything else is unpriced.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import date
from importlib import resources
from pathlib import Path

from taximeter.pricing.catalog_files import CatalogError, parse_litellm, parse_toml
from taximeter.pricing.rates import ModelPrice

__all__ = ["SHIPPED", "Catalog", "CatalogError", "ModelPrice", "load_catalog", "problems", "warnings"]

SHIPPED = "prices.toml"
_DATE_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")


class Catalog:
    def __init__(self, prices: Iterable[ModelPrice], refused: Iterable[str] = ()) -> None:
        self._prices = {p.model: p for p in prices}
        self._aliases = {alias: p for p in self._prices.values() for alias in p.aliases}
        self.refused = tuple(refused)  # entries of operator files left unpriced, and why

    def __len__(self) -> int:
        return len(self._prices)

    def __iter__(self) -> Iterator[ModelPrice]:
        return iter(self._prices.values())

    def merged(self, other: Catalog) -> Catalog:
        """A catalog where ``other``'s models replace or extend this one's."""
        return Catalog([*self._prices.values(), *other._prices.values()], (*self.refused, *other.refused))

    def resolve(self, model: str) -> ModelPrice | None:
        """The price entry for ``model``, or None when no rule names it."""
        found = self._prices.get(model)
        if found is not None:
            return found
        undated = _DATE_SUFFIX.sub("", model)
        if undated != model and undated in self._prices:
            return self._prices[undated]
        return self._aliases.get(model) or self._aliases.get(undated)


def load_catalog(*paths: Path) -> Catalog:
    """The shipped catalog, with each file in ``paths`` merged over it in order.

    A ``.json`` file is read in LiteLLM's ``model_prices_and_context_window.json``
    format; anything else as taximeter TOML. Raises CatalogError.
    """
    shipped = resources.files("taximeter.pricing").joinpath(SHIPPED).read_text("utf-8")
    catalog = Catalog(parse_toml(shipped, source=SHIPPED))
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
        if missing:
            found.append(f"{price.model} ({price.api_type}): no {', '.join(missing)}")
    found.extend(f"refused: {reason}" for reason in catalog.refused)
    return found


def warnings(catalog: Catalog, today: date) -> list[str]:
    """What an operator should know but that does not stop billing: models
    past their shutdown date."""
    return [
        f"{p.model}: shut down upstream on {p.shutdown.isoformat()} ({p.source})"
        for p in sorted(catalog, key=lambda p: p.model)
        if p.shutdown is not None and p.shutdown <= today
    ]
