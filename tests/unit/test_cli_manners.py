"""The command's manners: a version, colour only where it is wanted."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest

from taximeter.proxy.cli import cli


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """Before: there was no --version."""
    with pytest.raises(SystemExit) as ended:
        cli.main(["--version"])
    assert ended.value.code == 0
    assert capsys.readouterr().out.strip() == f"taximeter {version('taximeter')}"


@pytest.mark.parametrize(
    ("tty", "no_color", "force", "colored"),
    [(True, None, None, True), (True, "1", None, False), (False, None, None, False), (False, "1", "1", True)],
)
def test_colour_follows_no_color(
    monkeypatch: pytest.MonkeyPatch, tty: bool, no_color: str | None, force: str | None, colored: bool
) -> None:
    """Before: NO_COLOR was ignored."""
    monkeypatch.setattr(cli.sys.stdout, "isatty", lambda: tty)
    for name, value in (("NO_COLOR", no_color), ("FORCE_COLOR", force)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert cli._colored() is colored


def test_every_command_and_option_has_help() -> None:
    """Before: most commands and options had none (spec 10: help everywhere)."""
    import argparse

    missing: list[str] = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                said = {choice.dest: choice.help for choice in action._choices_actions}
                for name, sub in action.choices.items():
                    if not said.get(name):
                        missing.append(f"{path} {name}")
                    walk(sub, f"{path} {name}")
            elif not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(cli._parser(), "taximeter")
    assert missing == []


SNAPSHOT = Path(__file__).parent.parent / "snapshots" / "cli_help.txt"


def test_help_is_as_reviewed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command's --help, as last reviewed (tests/snapshots/cli_help.txt):
    a change to what the CLI says shows up in review. After a deliberate
    change, write it anew with TAXIMETER_TEST_UPDATE_SNAPSHOTS=1."""
    import argparse
    import os

    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps to the terminal's width
    pages: list[str] = []

    def walk(parser: argparse.ArgumentParser) -> None:
        pages.append(f"$ {parser.prog} --help\n{parser.format_help()}")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)

    walk(cli._parser())
    text = "\n".join(pages)
    if os.environ.get("TAXIMETER_TEST_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(text)
    assert text == SNAPSHOT.read_text(), "the CLI's help changed: review it, then write the snapshot anew"
