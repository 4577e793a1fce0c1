"""The pages' message catalog: what the templates and the dashboard's
Python code say, and the Portuguese catalog that translates it.

    python -m taximeter.proxy.dashboard.catalog           # add new messages to the .po files
    python -m taximeter.proxy.dashboard.catalog --check   # fail on a message left untranslated

Messages are found with Babel's extractors: ``{% trans %}`` and ``_()`` in
the templates (Jinja's extractor), ``gettext``, ``ngettext`` and ``N_`` in the
Python code. A message no longer said is dropped from the catalog.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po, write_po

__all__ = ["CATALOGS", "HERE", "extracted", "untranslated", "update"]

HERE = Path(__file__).parent
CATALOGS = {"pt_BR": HERE / "locale" / "pt_BR" / "LC_MESSAGES" / "messages.po"}
_METHODS = [("templates/**.html", "jinja2"), ("**.py", "python")]
_OPTIONS = {"templates/**.html": {"extensions": "jinja2.ext.i18n", "trimmed": "true"}}
_KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None}


def extracted() -> Catalog:
    """Every message the pages say, with where each is said."""
    catalog = Catalog(project="taximeter", charset="utf-8")
    found: Iterator[tuple[str, int, str | tuple[str, ...], list[str], str | None]] = extract_from_dir(
        str(HERE),
        method_map=_METHODS,
        options_map=_OPTIONS,
        keywords=_KEYWORDS,
        comment_tags=("TRANSLATORS:",),
        strip_comment_tags=True,
    )
    for filename, line, message, comments, context in found:
        if filename.startswith("catalog"):
            continue
        catalog.add(message, None, [(filename, line)], auto_comments=comments, context=context)
    return catalog


def untranslated(locale: str) -> list[str]:
    """The messages said that the ``locale`` catalog does not translate."""
    with CATALOGS[locale].open("rb") as po:
        known = read_po(po, locale=locale)
    missing = []
    for message in extracted():
        if not message.id:
            continue
        have = known.get(message.id, message.context)
        strings = have.string if have is not None else None
        filled = all(strings) if isinstance(strings, tuple) else bool(strings)
        if not filled or (have is not None and have.fuzzy):
            missing.append(message.id if isinstance(message.id, str) else message.id[0])
    return missing


def update() -> None:
    """Bring every catalog up to what the pages say (new messages empty)."""
    template = extracted()
    for locale, path in CATALOGS.items():
        if path.exists():
            with path.open("rb") as po:
                catalog = read_po(po, locale=locale)
        else:
            catalog = Catalog(
                locale=locale,
                project="taximeter",
                charset="utf-8",
                header_comment=f"# {locale} translation of taximeter's dashboard and tenant portal.",
                fuzzy=False,
            )
        catalog.project, catalog.version = "taximeter", "1"
        catalog.update(template, no_fuzzy_matching=True)
        catalog.obsolete.clear()
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as po:
            write_po(po, catalog, width=100, sort_output=False, include_lineno=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taximeter.proxy.dashboard.catalog", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail on a message left untranslated")
    args = parser.parse_args(argv)
    if args.check:
        failed = False
        for locale in CATALOGS:
            for message in untranslated(locale):
                print(f"{locale}: untranslated: {message!r}", file=sys.stderr)
                failed = True
        return 1 if failed else 0
    update()
    return 0


if __name__ == "__main__":
    sys.exit(main())
