"""What a client pays: the exchange rate in force for its currency, times its
markup (spec section 6c), and the models its terms let it call.

Rates are data in the store. Each process keeps the rates in force in memory:
one it sets itself applies from its next admission; one set by another
process (a worker, the CLI) from the next refresh, which the sweeper runs
every interval, and at once for a currency this process has never seen.
"""

from __future__ import annotations

from decimal import Decimal
from fnmatch import fnmatchcase

from taximeter.pricing.charge import Tariff
from taximeter.pricing.models import ExchangeRate, Terms
from taximeter.proxy.errors import MeteringUnavailable, ModelNotAllowed
from taximeter.store.base import ExchangeRates

__all__ = ["USD", "RateBook", "check_model_allowed"]

USD = "USD"


class RateBook:
    """The rate in force of each currency, from the store, with the
    ``exchange_rate`` setting as the first rate of the server's currency."""

    def __init__(self, store: ExchangeRates, *, currency: str, first_rate: Decimal) -> None:
        self._store = store
        self.currency = currency  # the server's: a client without its own pays in it
        self._first_rate = first_rate
        self._rates: dict[str, Decimal] = {}
        self.stale = False  # another process set a rate: read them again before the next call

    async def refresh(self) -> None:
        """Read the rates in force from the store."""
        self.stale = False
        current = await self._store.current_rates()
        self._rates = {currency: rate.rate for currency, rate in current.items()}

    def put(self, rate: ExchangeRate) -> None:
        """A rate this process has just set: in force from its next admission."""
        self._rates[rate.currency] = rate.rate

    def known(self, currency: str) -> Decimal | None:
        """The rate in force of ``currency``, None when it has none."""
        if currency == USD:
            return Decimal(1)
        found = self._rates.get(currency)
        if found is None and currency == self.currency:
            return self._first_rate
        return found

    async def tariff(self, terms: Terms) -> Tariff:
        """What a USD of list price costs a client on ``terms``, now."""
        currency = terms.currency or self.currency
        if self.stale:
            await self.refresh()
        rate = self.known(currency)
        if rate is None:  # set since the last refresh, by another process
            await self.refresh()
            rate = self.known(currency)
        if rate is None:
            raise MeteringUnavailable(f"no exchange rate for {currency}: set it with PUT /admin/rates/...")
        return Tariff(currency, rate, terms.markup)


def check_model_allowed(model: str, terms: Terms) -> None:
    """Raise ModelNotAllowed (403) unless ``model`` matches one of the
    client's ``models_allowed`` globs (no list: every model)."""
    allowed = terms.models_allowed
    if allowed is not None and not any(fnmatchcase(model, glob) for glob in allowed):
        raise ModelNotAllowed(f"model {model!r} is not among the models this key may call", param="model")
