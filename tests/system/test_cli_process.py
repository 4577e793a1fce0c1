"""The command as a process: a reader that goes away is not an error."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest


@pytest.mark.slow
def test_a_closed_pipe_ends_quietly() -> None:
    """Before: `taximeter usage acme | head` ended in a BrokenPipeError traceback."""
    code = (
        "import sys\n"
        "from taximeter.proxy.cli import cli\n"
        "def lots(argv):\n"
        "    for n in range(100_000):\n"
        "        print('row', n)\n"
        "    return 0\n"
        "cli._main = lots\n"
        "sys.exit(cli.main([]))\n"
    )
    reader = subprocess.Popen(["head", "-n", "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert reader.stdin is not None
    writer = subprocess.run(
        [sys.executable, "-c", code], stdout=reader.stdin, stderr=subprocess.PIPE, timeout=60, check=False
    )
    reader.stdin.close()
    assert reader.stdout is not None
    out = reader.stdout.read()
    reader.wait(timeout=10)
    assert out == b"row 0\n"
    assert (writer.returncode, writer.stderr) == (0, b"")


def test_the_cli_names_its_database_and_creates_none_unasked(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: a CLI run from another folder silently created an empty taximeter.db."""
    from taximeter.proxy.cli import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "configure_logging", lambda *args: None)  # the test run's logging stays as it is
    for name in [n for n in os.environ if n.startswith("TAXIMETER_")]:
        monkeypatch.delenv(name)
    assert cli.main(["clients", "list"]) == 2
    assert not (tmp_path / "taximeter.db").exists()
    assert f"no database at {tmp_path}/taximeter.db" in capsys.readouterr().err
    assert cli.main(["--create", "clients", "add", "acme"]) == 0
    assert f"taximeter: database sqlite {tmp_path}/taximeter.db" in capsys.readouterr().err
    assert cli.main(["clients", "list"]) == 0 and "acme" in capsys.readouterr().out
