"""A start-up that fails part way releases exactly what it had opened, in
reverse order, and the failure reaches the caller (STYLE 12: one cleanup
context per resource)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web

from taximeter.proxy import app as app_module
from taximeter.proxy.app import create_app
from taximeter.proxy.services import LEDGER, SERVICES
from taximeter.proxy.settings import Settings
from taximeter.store.base import Gate, Store
from tests.support.clock import FakeClock


class Boom(RuntimeError):
    """The failure a test injects."""


class Spies:
    """Opens the real store and gate, and notes every ``close`` in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.closed: list[str] = []
        self.stores: list[Store] = []
        self.gates: list[Gate] = []
        self._monkeypatch = monkeypatch
        real_open_store, real_open_gate = app_module.open_store, app_module.open_gate

        async def open_store(url: str) -> Store:
            store = await real_open_store(url)
            self._spy(store, "store")
            self.stores.append(store)
            return store

        def open_gate(*args: Any, **kwargs: Any) -> Gate:
            gate = real_open_gate(*args, **kwargs)
            self._spy(gate, "gate")
            self.gates.append(gate)
            return gate

        monkeypatch.setattr(app_module, "open_store", open_store)
        monkeypatch.setattr(app_module, "open_gate", open_gate)

    def _spy(self, resource: Store | Gate, name: str) -> None:
        real_close = resource.close

        async def close() -> None:
            self.closed.append(name)
            await real_close()

        self._monkeypatch.setattr(resource, "close", close)


async def _start_and_fail(settings: Settings) -> web.Application:
    """Start the app as a runner does; it must fail. Then clean up, as the
    runner's owner does after a failed ``setup()``."""
    app = create_app(settings, clock=FakeClock())
    runner = web.AppRunner(app)
    with pytest.raises(Boom):
        await runner.setup()
    await runner.cleanup()
    return app


async def test_a_gate_that_fails_to_open_closes_the_store(
    backend: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spies = Spies(monkeypatch)

    def broken_gate(*args: Any, **kwargs: Any) -> Gate:
        raise Boom("the gate cannot open")

    monkeypatch.setattr(app_module, "open_gate", broken_gate)
    await _start_and_fail(Settings(**backend))
    assert len(spies.stores) == 1
    assert spies.closed == ["store"]


async def test_a_session_that_fails_to_open_closes_the_ledger_gate_and_store(
    backend: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spies = Spies(monkeypatch)

    def broken_connector(*args: Any, **kwargs: Any) -> aiohttp.TCPConnector:
        raise Boom("no connector")

    monkeypatch.setattr(aiohttp, "TCPConnector", broken_connector)
    app = await _start_and_fail(Settings(**backend))
    assert spies.closed == ["gate", "store"]  # the reverse of the order they opened in
    assert not app[LEDGER].alive  # its writer task was started, and is stopped
    assert SERVICES not in app  # nothing past the failure was built


async def test_a_failed_migration_closes_the_store(
    backend: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spies = Spies(monkeypatch)
    real_open_store = app_module.open_store

    async def unmigratable(url: str) -> Store:
        store = await real_open_store(url)

        async def migrate() -> None:
            raise Boom("the schema cannot be applied")

        monkeypatch.setattr(store, "migrate", migrate)
        return store

    monkeypatch.setattr(app_module, "open_store", unmigratable)
    await _start_and_fail(Settings(**backend))
    assert spies.closed == ["store"]
    assert spies.gates == []
