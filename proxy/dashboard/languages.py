"""Which language and number format a page is shown in, and the catalogs
that translate it.

The pages are written in English; ``locale/pt_BR/LC_MESSAGES/messages.po``
translates them (gettext, read with Babel). A page is shown in the language
its reader chose with the switch (``?lang=``, kept in a cookie), else the
``locale`` setting, else the browser's ``Accept-Language``, else the one
usual for the currency (pt_BR for BRL). Numbers and money follow the same
locale ("R$ 450,00" in pt_BR, "R$450.00" in en_US).

The catalogs are read once at start-up (:func:`load_catalogs`, off the event
loop); a :class:`Languages` hands out one :class:`Formatter` per locale.
"""

from __future__ import annotations

import asyncio
import gettext
import io
from collections.abc import Mapping
from importlib import resources

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from taximeter.proxy.dashboard.formatting import Formatter, locale_for

__all__ = [
    "LANGUAGES",
    "LANG_COOKIE",
    "Languages",
    "accepted",
    "load_catalogs",
    "supported",
]

# The languages the pages are written or translated in, each with the locale
# its numbers are shown in when nothing says otherwise.
LANGUAGES = {"en": "en_US", "pt": "pt_BR"}
LANG_COOKIE = "taximeter_lang"
_CATALOGS = {"pt": "pt_BR"}  # language -> the catalog's folder under locale/
_MAX_ACCEPT = 512  # characters of Accept-Language read; the rest is ignored


def supported(code: str | None) -> str | None:
    """The locale of a language code the switch names ("pt-BR", "pt", "en"),
    or None when it is not one of :data:`LANGUAGES`."""
    if not code or len(code) > 16:
        return None
    language = code.replace("-", "_").split("_", 1)[0].lower()
    return LANGUAGES.get(language)


def accepted(header: str) -> str | None:
    """The locale of the language ``Accept-Language`` prefers most among
    :data:`LANGUAGES` ("pt-BR,pt;q=0.9,en;q=0.8" -> pt_BR), or None."""
    best: tuple[float, int, str] | None = None
    for i, item in enumerate(header[:_MAX_ACCEPT].split(",")):
        tag, _, params = item.strip().partition(";")
        weight = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                weight = float(params[2:])
            except ValueError:
                continue
        found = supported(tag.strip())
        if found is None or not 0 < weight <= 1:
            continue
        if best is None or (-weight, i) < (-best[0], best[1]):
            best = (weight, i, found)
    return None if best is None else best[2]


def load_catalogs() -> dict[str, gettext.NullTranslations]:
    """Every translation catalog, by language. It reads files: call it off
    the event loop, once."""
    root = resources.files("taximeter.proxy.dashboard").joinpath("locale")
    catalogs: dict[str, gettext.NullTranslations] = {}
    for language, folder in _CATALOGS.items():
        with root.joinpath(folder, "LC_MESSAGES", "messages.po").open("rb") as po:
            catalog = read_po(po, locale=folder)
        compiled = io.BytesIO()
        write_mo(compiled, catalog)
        compiled.seek(0)
        catalogs[language] = gettext.GNUTranslations(compiled)
    return catalogs


class Languages:
    """Picks each page's locale and keeps one formatter per locale."""

    def __init__(self, catalogs: Mapping[str, gettext.NullTranslations], configured: str | None) -> None:
        self._catalogs = catalogs
        self._configured = configured  # the ``locale`` setting, or None
        self._formatters: dict[str, Formatter] = {}

    def pick(self, chosen: str | None, accept_language: str, currency: str) -> str:
        """The locale of a page: the reader's choice (``?lang=`` or its
        cookie), the setting, the browser's preference, the currency's."""
        return supported(chosen) or self._configured or accepted(accept_language) or locale_for(currency)

    async def formatter(self, locale: str) -> Formatter:
        """The formatter of ``locale``, made off the event loop the first
        time (Babel reads the locale's data from files)."""
        found = self._formatters.get(locale)
        if found is None:
            language = locale.split("_", 1)[0]  # no Locale.parse here: it reads files
            translations = self._catalogs.get(language, gettext.NullTranslations())
            found = await asyncio.to_thread(Formatter, locale, translations)
            self._formatters[locale] = found
        return found
