"""This process's calls in flight: each one's reservation and the gate that
admitted it, so a gate that lost them gets them back, the sweeper keeps them
alive, and a release goes to the gate that holds them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from taximeter.pricing.models import Reservation
from taximeter.store.base import Gate

__all__ = ["Held", "HeldCalls"]


@dataclass(frozen=True, slots=True)
class Held:
    reservation: Reservation
    gates: frozenset[Gate]  # every gate that holds it: the one that admitted it, and any it was restored to


class HeldCalls:
    def __init__(self) -> None:
        self._calls: dict[str, dict[str, Held]] = {}  # by client, then request

    def add(self, reservation: Reservation, *gates: Gate) -> None:
        held = Held(reservation, frozenset(gates))
        self._calls.setdefault(reservation.client_id, {})[reservation.request_id] = held

    def restored(self, client_id: str, gate: Gate) -> None:
        """``gate`` now holds every call of ``client_id`` in flight too."""
        for held in self._calls.get(client_id, {}).values():
            self.add(held.reservation, *held.gates, gate)

    def pop(self, client_id: str, request_id: str) -> Held | None:
        calls = self._calls.get(client_id)
        if calls is None:
            return None
        held = calls.pop(request_id, None)
        if not calls:
            del self._calls[client_id]
        return held

    def of(self, client_id: str) -> list[Reservation]:
        """The reservations of ``client_id``'s calls in flight."""
        return [held.reservation for held in self._calls.get(client_id, {}).values()]

    def expiring(self, before: datetime) -> list[Reservation]:
        """The reservations that expire by ``before``."""
        return [
            held.reservation
            for calls in self._calls.values()
            for held in calls.values()
            if held.reservation.expires_at <= before
        ]

    def renew(self, reservations: list[Reservation]) -> None:
        """The gates now hold ``reservations`` until their new expiry."""
        for reservation in reservations:
            held = self._calls.get(reservation.client_id, {}).get(reservation.request_id)
            if held is not None:
                self.add(reservation, *held.gates)
