"""Numbers, money and times as an operator reads them, in a locale (pure).

Babel knows each locale's separators and each currency's symbol and
placement, so "R$ 450,00" and "$450.00" come out right without a table here.
"""

from __future__ import annotations

import gettext
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from babel import Locale
from babel.dates import format_datetime
from babel.numbers import format_currency, format_decimal, get_currency_precision

__all__ = ["N_", "Formatter", "locale_for"]

# The locale a currency's own users read it in, when none is configured.
_CURRENCY_LOCALES = {
    "BRL": "pt_BR",
    "USD": "en_US",
    "EUR": "de_DE",
    "GBP": "en_GB",
    "JPY": "ja_JP",
    "MXN": "es_MX",
    "ARS": "es_AR",
    "CLP": "es_CL",
    "COP": "es_CO",
    "CAD": "en_CA",
    "AUD": "en_AU",
    "INR": "en_IN",
}
_FALLBACK = "en_US"


def N_(message: str) -> str:  # gettext's name for "translated where shown"
    """Mark ``message`` for the catalogs; it is translated where it is shown."""
    return message


_MONEY_SAID = 4096  # amounts a formatter remembers having written


def locale_for(currency: str, configured: str | None = None) -> str:
    """The configured locale, else the usual one for ``currency``."""
    return configured or _CURRENCY_LOCALES.get(currency.upper(), _FALLBACK)


class Formatter:
    """Formats and words for one locale; every method is pure.

    Babel reads a locale's data from files the first time it is used, so the
    constructor uses every format once: build it off the event loop.
    """

    def __init__(self, locale: str, translations: gettext.NullTranslations | None = None) -> None:
        self.locale = Locale.parse(locale)
        self.translations = translations or gettext.NullTranslations()
        # The page's words in its language (the English text when the catalog lacks it).
        self.gettext = self.translations.gettext
        self.ngettext = self.translations.ngettext
        self._money_said: dict[tuple[Decimal, str], str] = {}
        self.money(Decimal(1), "USD")
        self.money_exact(Decimal("0.1"), "USD")
        self.percent(1.0)
        self.when(datetime(2000, 1, 1, tzinfo=UTC), "UTC")

    def money(self, amount: Decimal, currency: str) -> str:
        """``amount`` in ``currency``, to the currency's usual decimals ("R$ 450,00");
        an amount those decimals would show as zero keeps two significant
        digits ("R$ 0,0041"), so a tiny limit never reads "R$ 0,00"."""
        if amount.is_zero():
            amount = abs(amount)  # -0 and 0 are one key: both read "R$ 0,00"
        key = (amount, currency)
        said = self._money_said.get(key)
        if said is None:
            if len(self._money_said) >= _MONEY_SAID:  # a page's amounts repeat (zeros, limits); bounded
                self._money_said.clear()
            said = self._money_said[key] = self._money(amount, currency)
        return said

    def _money(self, amount: Decimal, currency: str) -> str:
        places = get_currency_precision(currency)
        if amount and abs(amount) < Decimal(1).scaleb(-places):
            tiny = amount.quantize(Decimal(1).scaleb(amount.adjusted() - 1))
            return format_currency(tiny, currency, locale=self.locale, decimal_quantization=False)
        return format_currency(amount, currency, locale=self.locale)

    @property
    def code(self) -> str:
        """The locale as a page's ``lang`` attribute says it ("pt-BR")."""
        return str(self.locale).replace("_", "-")

    def money_exact(self, amount: Decimal, currency: str) -> str:
        """Every significant digit, for one call's cost ("R$ 0,000125")."""
        return format_currency(amount, currency, locale=self.locale, decimal_quantization=False)

    def number(self, value: int | Decimal) -> str:
        """With the locale's thousands separator ("1.234.567" in pt_BR)."""
        return format_decimal(value, locale=self.locale)

    def percent(self, value: float) -> str:
        """A percent figure (85.0 means 85%) with one decimal: "85,0%"."""
        return format_decimal(Decimal(str(value)), format="#,##0.0", locale=self.locale) + "%"

    def when(self, moment: datetime, timezone: str) -> str:
        """A time in ``timezone``, short date and time, with the zone's name."""
        local = format_datetime(moment, "short", tzinfo=ZoneInfo(timezone), locale=self.locale)
        return f"{local} ({timezone})"
