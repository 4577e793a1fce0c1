"""The command as a process: a reader that goes away is not an error."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


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
