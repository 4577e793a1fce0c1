"""The pages' languages (pure): the Portuguese catalog says everything the
pages say, with the same placeholders; Accept-Language and the switch pick a
supported language; a portal link's token is signed, expiring and tamper-proof."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from babel.messages.pofile import read_po

from taximeter.proxy.dashboard import catalog
from taximeter.proxy.dashboard.languages import Languages, accepted, load_catalogs, supported
from taximeter.proxy.portal_links import make_token, new_secret, portal_url, read_token


def test_every_message_the_pages_say_is_translated_to_portuguese() -> None:
    said = {m.id if isinstance(m.id, str) else m.id[0] for m in catalog.extracted() if m.id}
    assert len(said) > 150  # the templates and the Python code were both read
    assert "Save budget" in said and "at this pace: %(amount)s by the period's end" in said
    assert catalog.untranslated("pt_BR") == []


def test_translations_keep_every_placeholder_and_tag() -> None:
    with catalog.CATALOGS["pt_BR"].open("rb") as po:
        translated = read_po(po, locale="pt_BR")
    problems = [(m.id, str(e)) for m in translated for e in m.check(translated)]
    assert problems == []
    for message in translated:
        if not message.id or not isinstance(message.id, str):
            continue
        assert sorted(_tags(message.id)) == sorted(_tags(str(message.string))), message.id


def _tags(text: str) -> list[str]:
    return re.findall(r"</?[a-z]+[^>]*>|\{\{[^}]*\}\}", text)


def test_the_catalog_translates_at_run_time_with_plurals() -> None:
    pt = load_catalogs()["pt"]
    assert pt.gettext("Save budget") == "Salvar orçamento"
    assert pt.gettext("a message no page says") == "a message no page says"
    one = "Too many wrong tokens from your address. Try again in %(num)d minute."
    many = "Too many wrong tokens from your address. Try again in %(num)d minutes."
    assert pt.ngettext(one, many, 1) % {"num": 1} != pt.ngettext(one, many, 5) % {"num": 5}
    assert "5 minutos" in pt.ngettext(one, many, 5) % {"num": 5}


@pytest.mark.parametrize(
    ("header", "picked"),
    [
        ("pt-BR,pt;q=0.9,en-US;q=0.8,en;q=0.7", "pt_BR"),
        ("en-US,en;q=0.9,pt;q=0.8", "en_US"),
        ("de-DE,de;q=0.9", None),  # no language the pages speak
        ("de;q=1, pt;q=0.5, en;q=0.7", "en_US"),  # by weight, not by order
        ("pt;q=0, en;q=0.1", "en_US"),  # q=0 means "not this one"
        ("pt;q=abc, en", "en_US"),
        ("*", None),
        ("", None),
        ("pt-PT", "pt_BR"),  # the one Portuguese there is
        ("x" * 10_000 + ",pt", None),  # read only so far
    ],
)
def test_accept_language_picks_the_preferred_language_the_pages_speak(
    header: str, picked: str | None
) -> None:
    assert accepted(header) == picked


def test_the_choice_beats_the_setting_which_beats_the_browser_which_beats_the_currency() -> None:
    free = Languages({}, configured=None)
    assert free.pick(None, "", "BRL") == "pt_BR"
    assert free.pick(None, "", "USD") == "en_US"
    assert free.pick(None, "en", "BRL") == "en_US"
    assert free.pick("pt-BR", "en", "USD") == "pt_BR"
    assert free.pick("klingon", "en", "BRL") == "en_US"  # an unknown choice is ignored
    assert supported("pt") == "pt_BR" and supported("EN") == "en_US" and supported("x" * 100) is None
    fixed = Languages({}, configured="pt_BR")
    assert fixed.pick(None, "en", "USD") == "pt_BR"
    assert fixed.pick("en", "pt", "BRL") == "en_US"


def test_a_portal_token_is_signed_expiring_and_bound_to_its_client() -> None:
    secret = new_secret()
    expires = datetime(2026, 12, 8, 12, 0, tzinfo=UTC)
    token = make_token("acme", expires, secret)
    found = read_token(token)
    assert found is not None and found.client_id == "acme" and found.expires_at == expires
    assert found.signed_with(secret)
    assert not found.signed_with(new_secret())  # a new secret revokes it
    client_id, stamp, signature = token.split(".")
    for forged in (
        f"rival.{stamp}.{signature}",
        f"{client_id}.{int(stamp) + 1}.{signature}",
    ):
        parsed = read_token(forged)
        assert parsed is not None and not parsed.signed_with(secret)
    for malformed in (
        "",
        "acme",
        f"ACME.{stamp}.{signature}",
        token + "x",
        f"acme.-1.{signature}",
        "a" * 200,
    ):
        assert read_token(malformed) is None
    assert portal_url("https://meter.example.com", token) == f"https://meter.example.com/portal/{token}"
