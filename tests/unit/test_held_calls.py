"""Which gates hold a call in flight, so its release reaches every one."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from taximeter.pricing.models import Reservation
from taximeter.proxy.gateway.exchange import RateBook
from taximeter.proxy.gateway.metering import Meter
from taximeter.store.local_gate import LocalGate
from tests.support.factories import estimated_event, reservation

T0 = datetime(2026, 11, 25, 12, tzinfo=UTC)


class Recording(LocalGate):
    def __init__(self) -> None:
        super().__init__(max_age_s=3600)
        self.released: list[str] = []

    async def release(self, client_id: str, request_id: str) -> None:
        self.released.append(request_id)


def held(request_id: str) -> Reservation:
    return reservation(estimated_event(request_id))


def meter(gate: Recording, fallback: Recording) -> Meter:
    nothing: Any = None  # the release path touches neither store, ledger nor catalog
    return Meter(
        store=nothing,
        gate=gate,
        ledger=nothing,
        fallback=fallback,
        catalog=nothing,
        rates=RateBook(nothing, currency="BRL", first_rate=Decimal(5)),
        allow_unpriced=True,
    )


async def test_a_call_restored_into_the_fallback_is_released_there_too() -> None:
    """Before: a call the gate admitted, copied into the store when the gate
    went down, was released from the gate only; the store's row was later
    charged by the sweeper for a call never forwarded."""
    gate, fallback = Recording(), Recording()
    m = meter(gate, fallback)
    m.held.add(held("a"), gate)
    m.held.add(held("b"), gate)
    m.held.restored("acme", fallback)
    m.held.add(held("c"), gate)  # admitted after the copy: the gate's alone
    for request_id in ("a", "c"):
        await m.release("acme", request_id)
    assert (sorted(gate.released), fallback.released) == (["a", "c"], ["a"])
    assert [r.request_id for r in m.held.of("acme")] == ["b"]


async def test_a_call_cut_short_in_admission_is_released_from_both_gates() -> None:
    gate, fallback = Recording(), Recording()
    await meter(gate, fallback).release("acme", "never-held")
    assert (gate.released, fallback.released) == (["never-held"], ["never-held"])
