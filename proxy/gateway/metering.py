"""Budget admission, pricing and recording: the steps around a forwarded call.

``admit`` holds a reservation of the call's estimated tokens and cost in the
gate, atomically with the budget check; on a miss it first rebuilds the gate's
copy from the store (after the local ledger is flushed, so the copy includes
this process's latest events). ``settle`` swaps the reservation for the actual
usage *before* the response's last byte goes out, so a client's next request
always sees it, then hands the event to the ledger writer to be made durable
off the critical path; a shared gate keeps the event until the ledger says it
is durable, so a process killed in between loses nothing.

When the gate cannot be reached, the fallback gate (the store, under the
budget's row lock) admits instead; the Meter remembers which gate took each
call in flight. The sweeper (``sweeper.py``) keeps those calls alive and
charges the calls of processes that died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Protocol

from taximeter.pricing import limits
from taximeter.pricing.catalog import Catalog, ModelPrice
from taximeter.pricing.catalog_files import CatalogError
from taximeter.pricing.models import BudgetState, Hold, Reservation, Terms, UsageEvent
from taximeter.pricing.money import to_nanos
from taximeter.proxy.clock import Clock, system_clock
from taximeter.proxy.errors import (
    BudgetBusy,
    BudgetExceeded,
    LimitReached,
    MeteringUnavailable,
    ModelNotPriced,
)
from taximeter.proxy.gateway.exchange import RateBook
from taximeter.proxy.gateway.held import HeldCalls
from taximeter.proxy.gateway.ledger_feedback import LedgerFeedback
from taximeter.store.base import Admission, Budgets, Directory, Gate, LedgerReads, Outbox, StoreUnavailable
from taximeter.store.ledger import LedgerWriter

__all__ = ["Meter"]

log = logging.getLogger("taximeter.metering")

_REASONS = {
    "token_limit": "its token limit is reached",
    "cost_limit": "its cost limit is reached",
    "manual": "it was paused by an operator",
}
_REBUILD_ATTEMPTS = 3
_NO_TERMS = Terms()


class MeterStore(Budgets, Directory, LedgerReads, Outbox, Protocol):
    """What the meter reads and writes of the store: budgets, the ledger's
    count of a limit whose counter the gate lost, the alerts of limits, and
    a client's terms (for what is charged long after its call)."""


class Meter:
    def __init__(
        self,
        *,
        store: MeterStore,
        gate: Gate,
        ledger: LedgerWriter,
        fallback: Gate,
        catalog: Catalog,
        rates: RateBook,
        load_catalog: Callable[[date], Catalog] | None = None,
        timezone: str = "UTC",
        allow_unpriced: bool,
        reservation_ttl_s: float = 660.0,
        record_grace_s: float = 60.0,
        clock: Clock = system_clock,
    ) -> None:
        self.store = store
        self.gate = gate
        self.ledger = ledger
        self.catalog = catalog
        # The catalog as of another day: prices change on a date (a catalog's
        # dated price sets); a process started before it prices by it from then.
        self._load_catalog = load_catalog
        self._catalog_day = clock().date()
        self.rates = rates
        self.timezone = timezone  # where a client's daily and longer limit windows start, without a budget
        self.allow_unpriced = allow_unpriced
        self.reservation_ttl = timedelta(seconds=reservation_ttl_s)
        # How long a settled event may wait for the ledger before the sweeper
        # of any process takes it for lost with its process and records it.
        self.record_grace = timedelta(seconds=record_grace_s)
        # Admits under the store's row lock while the gate cannot be reached.
        self.fallback = fallback
        self.clock = clock
        self.held = HeldCalls()
        self.feedback = LedgerFeedback(gate, self._count_late)
        # Clients whose gate copy may be stale because changes went past it:
        # rebuilt before the gate is trusted again.
        self._stale: set[str] = set()
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        self._rebuilding: dict[str, asyncio.Future[BudgetState | None]] = {}
        # Calls settled while their client's copy is being rebuilt, with their
        # ledger sequence numbers: re-applied to the new copy unless the store
        # read already held them.
        self._deferred: dict[str, list[tuple[int, UsageEvent]]] = {}
        self._gate_failing = False  # the last count in the gate failed: events are not held for it

    async def follow_prices(self, today: date) -> None:
        """Read the catalogs again as of ``today`` when the day has changed
        since they were read. A catalog that cannot be read keeps the prices
        in force (said once a day in the log)."""
        if self._load_catalog is None or today == self._catalog_day:
            return
        self._catalog_day = today
        try:
            self.catalog = await asyncio.to_thread(self._load_catalog, today)
        except CatalogError as exc:
            log.warning("prices_not_reloaded", extra={"day": today.isoformat(), "error": str(exc)})

    def resolve_price(self, model: str | None, metered: bool, provider: str) -> ModelPrice | None:
        """The model's prices at ``provider``; raises ModelNotPriced when the policy rejects it."""
        price = self.catalog.resolve(model, provider) if model else None
        if price is None and metered and not self.allow_unpriced:
            raise ModelNotPriced(
                f"model {model!r} has no {provider} price in the catalog; add it to a pricing file "
                'or set unpriced_models = "allow"',
                param="model",
            )
        return price

    def reservation(self, estimate: UsageEvent, terms: Terms = _NO_TERMS) -> Reservation:
        """A reservation holding ``estimate`` (an event flagged estimated) on
        the budget and on each of the client's limits that applies to it."""
        event = estimate if estimate.estimated else replace(estimate, estimated=True)
        now = self.clock()
        cost_nanos = to_nanos(event.cost)
        holds = limits.holds_for(
            terms.limits,
            client_id=event.client_id,
            model=event.model,
            end_user=event.end_user,
            tokens=event.tokens,
            cost_nanos=cost_nanos,
            timezone=terms.timezone or self.timezone,
            now=now,
        )
        return Reservation(event, cost_nanos, now + self.reservation_ttl, holds)

    async def admit(self, reservation: Reservation) -> None:
        """Hold ``reservation`` against the client's budget, or raise
        BudgetExceeded (BudgetBusy while calls in flight fill the limit)."""
        now = self.clock()
        client_id = reservation.client_id
        try:
            admission = await self._admit_via_gate(reservation, now)
        except StoreUnavailable as exc:
            log.warning("gate_unavailable", extra={"client": client_id, "error": str(exc)})
            admission = await self._admit_via_fallback(reservation, now)
        if admission.reason is not None and admission.reason.startswith("limit:"):
            raise self._limit_refusal(reservation, admission, now)
        if admission.outcome == "busy":
            busy = BudgetBusy(
                f"budget of client {client_id!r} is fully reserved by calls in flight; retry shortly"
            )
            busy.reason = "reserved"
            raise busy
        if admission.outcome == "refused":
            reason = admission.reason or "manual"
            refused = BudgetExceeded(
                f"budget of client {client_id!r} is exhausted: {_REASONS.get(reason, reason)}. "
                "Requests resume when the period resets or an operator raises the limit.",
            )
            refused.reason = reason
            raise refused

    @staticmethod
    def _limit_refusal(reservation: Reservation, admission: Admission, now: datetime) -> LimitReached:
        name = (admission.reason or "").removeprefix("limit:")
        hold = next(h for h in reservation.holds if h.limit.name == name)
        return LimitReached(hold, busy=admission.outcome == "busy", now=now)

    async def _load_limits(self, reservation: Reservation, now: datetime) -> None:
        """Count the call's spend caps again from the ledger, where the gate lost them."""
        await self.ledger.flush()
        wanted = [h for h in reservation.holds if h.limit.rebuilt_from_ledger]
        counted = [(hold, await self.store.limit_used(hold, reservation.client_id)) for hold in wanted]
        await self.gate.load_limits(counted, now)

    async def _admit_via_gate(self, reservation: Reservation, now: datetime) -> Admission:
        client_id = reservation.client_id
        if client_id in self._stale:
            await self.rebuild(client_id, now)
            self._stale.discard(client_id)
        admission = await self.gate.admit(reservation, now)
        for _ in range(_REBUILD_ATTEMPTS):
            if admission.outcome != "miss":
                break
            if admission.reason == "limits":
                await self._load_limits(reservation, now)
            else:
                await self.rebuild(client_id, now)
            admission = await self.gate.admit(reservation, now)
        if admission.outcome == "miss":
            # The copy vanishes as fast as it is rebuilt (Redis being flushed
            # over and over): admitting without a reservation would break the bound.
            raise MeteringUnavailable("the budget gate keeps losing its state; try again shortly")
        if admission.outcome == "ok":
            self.held.add(reservation, self.gate)
        if client_id not in self._refreshing and self.gate.needs_refresh(client_id, now):
            self._refresh_in_background(client_id, now)
        return admission

    def _refresh_in_background(self, client_id: str, now: datetime) -> None:
        # Marked before the task runs: the calls admitted meanwhile start no other.
        self._refreshing[client_id] = asyncio.create_task(
            self._refresh(client_id, now), name=f"taximeter-refresh-{client_id}"
        )

    async def _refresh(self, client_id: str, now: datetime) -> None:
        try:
            await self.rebuild(client_id, now)
        except (StoreUnavailable, MeteringUnavailable) as exc:
            log.warning("gate_refresh_failed", extra={"client": client_id, "error": str(exc)})
        finally:
            del self._refreshing[client_id]

    async def _admit_via_fallback(self, reservation: Reservation, now: datetime) -> Admission:
        """Admission by the store under its row lock, while the gate is down.
        The calls this process has in flight through the gate are held in the
        store first, so the row lock's rule counts them too."""
        client_id = reservation.client_id
        self._stale.add(client_id)
        await self.ledger.flush()  # decide on every call this process has answered
        try:
            await self.fallback.restore(self.held.of(client_id))
            self.held.restored(client_id, self.fallback)
            admission = await self.fallback.admit(reservation, now)
        except StoreUnavailable as exc:
            raise MeteringUnavailable("neither the budget gate nor the store can be reached") from exc
        if admission.outcome == "ok":
            self.held.add(reservation, self.fallback)
        return admission

    async def precheck(self, client_id: str, request_id: str) -> None:
        """Raise as :meth:`admit` would for a paused or spent client, before its
        request is parsed: a reservation of nothing, admitted and let go."""
        now = self.clock()
        probe = UsageEvent(
            request_id=f"{request_id}:precheck",
            client_id=client_id,
            api_type="none",
            model="",
            endpoint="",
            status=0,
            created_at=now,
            currency=self.rates.currency,
            exchange_rate=Decimal(1),  # a probe of nothing: no money, no rate
            estimated=True,
        )
        try:
            await self.admit(Reservation(probe, 0, now + self.reservation_ttl))
        finally:  # admitted, refused or cut short: nothing of the probe stays behind
            await asyncio.shield(self.release(client_id, probe.request_id))

    def changed_elsewhere(self) -> None:
        """Another process changed something admission reads: this process's
        own copies (budgets, rates) are read anew before they decide a call."""
        self.gate.forget_copies()
        self.rates.stale = True

    def mark_stale(self, client_id: str) -> None:
        """The gate missed a change of this client's budget: rebuild before trusting it."""
        self._stale.add(client_id)

    async def rebuild(self, client_id: str, now: datetime) -> BudgetState | None:
        """Reload the gate's copy of a budget from the store, once however many
        calls ask at the same time, and hold this process's calls in flight again."""
        pending = self._rebuilding.get(client_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[BudgetState | None] = asyncio.get_running_loop().create_future()
        self._rebuilding[client_id] = future
        self._deferred[client_id] = []
        try:
            state = await self._reload(client_id, now)
            future.set_result(state)
            return state
        except BaseException as exc:
            try:
                # Calls that settled meanwhile still hold their reservations in the
                # gate: let them go (their usage reaches the copy at its next rebuild),
                # before the calls waiting for this rebuild (see settle) go on.
                for _, event in self._deferred.get(client_id, []):
                    with contextlib.suppress(StoreUnavailable):
                        await self.gate.settle(event, to_nanos(event.cost), event.created_at, budget=False)
                self.mark_stale(client_id)
            finally:
                future.set_exception(exc)
                future.exception()  # retrieved: waiters get it, the loop does not log it
            raise
        finally:
            del self._rebuilding[client_id]
            self._deferred.pop(client_id, None)

    async def _reload(self, client_id: str, now: datetime) -> BudgetState | None:
        await self.ledger.flush()
        async with self.ledger.paused() as durable:  # the read holds exactly events 1..durable
            state = await self._from_store(client_id, now)
        await self.gate.load(client_id, state, now)
        await self.gate.restore(self.held.of(client_id))
        self.held.restored(client_id, self.gate)
        for sequence, event in self._deferred.get(client_id, []):
            if sequence > durable:  # settled meanwhile, and not in what was read
                keep_until = self.clock() + self.record_grace
                await self.gate.settle(event, to_nanos(event.cost), event.created_at, keep_until=keep_until)
            else:  # already counted in what was read: its reservation goes, its limits get it
                await self.gate.settle(event, to_nanos(event.cost), event.created_at, budget=False)
        return state

    async def _from_store(self, client_id: str, now: datetime) -> BudgetState | None:
        try:
            return await self.store.get_budget(client_id, now)
        except StoreUnavailable as exc:
            raise MeteringUnavailable("the budget store is unreachable; try again shortly") from exc

    async def settle(self, event: UsageEvent) -> list[tuple[Hold, int]]:
        """Swap the call's reservation for ``event`` in the gate, then queue
        ``event`` for the ledger (whose record also frees a store-held one).
        Answers each limit the call held with what it has used now (where the
        gate keeps its counter)."""
        held = self.held.pop(event.client_id, event.request_id)
        # Ledger first: a rebuild that starts from here on flushes this event
        # into what it reads, or finds it deferred. Written only once the gate
        # has counted it: dying between the two must not leave its reservation
        # held in the gate while the store has its usage (a survivor charges
        # the reservation, finds the event recorded, and the gate never counts it).
        counting: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Not while the gate is failing: every batch would wait for its timeouts.
        sequence = await self.ledger.submit(event, after=None if self._gate_failing else counting)
        try:
            counted = await self._count(event, sequence, keep_until=self.clock() + self.record_grace)
        finally:
            counting.set_result(None)
        holds = () if held is None else held.reservation.holds
        if counted is None:
            # Deferred to the rebuild of the client's copy under way: until it
            # ends, the gate still holds the call's reservation (its estimate)
            # instead of its usage, on the budget and on every limit. The answer
            # waits for it, so the client's next call sees the usage (an estimate
            # far above it would find a limit busy that the call left room in).
            counted = await self._counted_once_rebuilt(event.client_id, holds)
        return [(hold, counted[hold.key]) for hold in holds if hold.key in counted]

    async def _counted_once_rebuilt(self, client_id: str, holds: tuple[Hold, ...]) -> dict[str, int]:
        """What each of ``holds``' counters has used once the rebuild of
        ``client_id``'s copy under way has applied the calls settled meanwhile."""
        rebuilding = self._rebuilding.get(client_id)
        if rebuilding is not None:  # its outcome is the rebuilder's to deal with
            await asyncio.wait([rebuilding])
        if not holds:
            return {}
        try:
            found = await self.gate.limit_counters(list(holds))
        except StoreUnavailable:
            return {}
        return {hold.key: c[0] for hold, c in zip(holds, found, strict=True) if c is not None}

    async def _count(
        self, event: UsageEvent, sequence: int, *, keep_until: datetime | None = None
    ) -> dict[str, int] | None:
        """Add ``event`` (ledger ``sequence``) to the gate's copy of its budget;
        kept there until ``keep_until`` unless the ledger says it is durable.
        What the gate's limit counters the call held have used now; None when
        its client's copy is being rebuilt: it is applied by that rebuild
        (which is then still under way: nothing is awaited before deferring)."""
        deferred = self._deferred.get(event.client_id)
        if deferred is not None:  # its copy is being rebuilt: applied once it is loaded
            deferred.append((sequence, event))
            return None
        try:
            counted = await self.gate.settle(
                event, to_nanos(event.cost), event.created_at, keep_until=keep_until
            )
        except StoreUnavailable as exc:
            # The store still records it; the gate's copy is rebuilt on its next miss.
            log.warning("gate_settle_failed", extra={"client": event.client_id, "error": str(exc)})
            self.mark_stale(event.client_id)
            self._gate_failing = True
            return {}
        self._gate_failing = False
        return counted

    async def admit_long_running(self, reservation: Reservation) -> None:
        """Admit a call that runs on upstream for hours (a batch) only if all
        it reserves fits in what is left (a call is otherwise admitted while
        anything is left): a probe of the same amount is held while it is
        admitted, so it fits beside the probe or is refused. Held until its
        watcher lets it go, never kept alive (or cut short) by this process,
        which may be gone long before it ends."""
        probe = replace(
            reservation, event=replace(reservation.event, request_id=f"{reservation.request_id}:fit")
        )
        await self.admit(probe)
        try:
            await self.admit(reservation)
        except LimitReached as exc:
            if not exc.busy:
                raise
            raise LimitReached(exc.hold, busy=False, now=self.clock()) from None
        except BudgetBusy:  # with the probe: the whole of it does not fit
            refused = BudgetExceeded(
                f"budget of client {reservation.client_id!r} has less left than this batch is estimated to "
                f"cost ({reservation.event.cost} {reservation.event.currency}, "
                f"{reservation.event.tokens} tokens), with what calls in flight hold"
            )
            refused.reason = "reserved"
            raise refused from None
        finally:
            await asyncio.shield(self.release(probe.client_id, probe.request_id))
        self.held.pop(reservation.client_id, reservation.request_id)

    async def hold_unchecked(self, reservation: Reservation) -> None:
        """Hold a call that runs whatever the budget says (a Realtime response
        the upstream started by itself): counted while it runs, settled as
        any call is."""
        try:
            await self.gate.restore([reservation])
            self.held.add(reservation, self.gate)
        except StoreUnavailable:
            try:
                await self.fallback.restore([reservation])
            except StoreUnavailable as exc:
                raise MeteringUnavailable("neither the budget gate nor the store can be reached") from exc
            self.held.add(reservation, self.fallback)

    async def hold_again(self, reservation: Reservation, *, recount: bool = True) -> None:
        """Hold a long-running call's reservation in every gate again until
        its (new) expiry: one a gate lost (Redis flushed, the process
        restarted) is held anew, one it has is not counted twice."""
        if recount:
            with contextlib.suppress(StoreUnavailable):
                # A counter the gate lost is counted again first: what is held
                # on it counts only where it exists.
                await self._load_limits(reservation, self.clock())
        for gate in (self.gate, self.fallback):  # the fallback admits with it too, while the gate is down
            with contextlib.suppress(StoreUnavailable):
                await gate.restore([reservation])
                await gate.extend([reservation])

    async def charge_late(self, event: UsageEvent, holds: tuple[Hold, ...]) -> None:
        """Charge a call no reservation of its own is held for (a batch's
        line): recorded, then counted in the gate (its budget, and ``holds``)
        only when the store records it for the first time, so any number of
        processes charging it count it once."""
        sequence = await self.ledger.submit(event)
        self.feedback.swept(event.request_id, sequence, holds)

    async def _count_late(self, event: UsageEvent, sequence: int, holds: tuple[Hold, ...]) -> None:
        """Count an event the sweeper or a watcher charged, now recorded;
        on ``holds``' counters through a reservation of nothing held for it."""
        if holds:
            expires = self.clock() + self.reservation_ttl
            with contextlib.suppress(StoreUnavailable):
                await self.gate.restore([Reservation(event, 0, expires, holds)])
        await self._count(event, sequence)

    async def release(self, client_id: str, request_id: str) -> None:
        """Drop a reservation whose call was never forwarded, from every gate
        that holds it (from both when admission was cut short)."""
        held = self.held.pop(client_id, request_id)
        for gate in {self.gate, self.fallback} if held is None else held.gates:
            with contextlib.suppress(StoreUnavailable):
                await gate.release(client_id, request_id)
