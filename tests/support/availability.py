"""What a test does when this machine lacks something it needs (a service, a
server binary, a browser, a tool): skipped on a developer's machine, failed
under ``CI=true``, where everything is installed (.ci/run)."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(message: str, hint: str = "") -> NoReturn:
    """Skip the test with ``message``; under ``CI=true``, fail it (with ``hint``,
    how to install what is missing)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: it is required{'; ' + hint if hint else ''})")
    pytest.skip(message)
