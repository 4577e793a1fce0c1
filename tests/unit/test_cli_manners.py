"""The command's manners: a version, colour only where it is wanted."""

from __future__ import annotations

from importlib.metadata import version

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
