"""The two backend roles, as Protocols: the store (ledger and budgets, the source
of truth) and the gate (the fast "may this client spend?" check).

The store is declared as narrow Protocols, one for each thing it holds
(:class:`Directory`, :class:`Budgets`, :class:`Ledger`, :class:`LedgerReads`,
:class:`HeldReservations`, :class:`Outbox`, :class:`DashboardSessions`), so each
consumer names only the part it uses; :class:`Store` is all of them plus the
backend's lifecycle.

Backends turn their driver's failures into :class:`StoreUnavailable` at one
choke point each; nothing else of a driver's leaks out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from types import TracebackType
from typing import Any, Protocol

from taximeter.pricing.models import (
    ApiKey,
    BudgetAlert,
    BudgetConfig,
    BudgetState,
    Client,
    Credit,
    ExchangeRate,
    Hold,
    Limit,
    OutboxItem,
    Outcome,
    OwnedObject,
    Reservation,
    Terms,
    UsageEvent,
    Watch,
)

__all__ = [
    "Admission",
    "Budgets",
    "Clients",
    "Conflict",
    "DashboardSessions",
    "DataRejected",
    "Directory",
    "DriverErrors",
    "ExchangeRates",
    "Exports",
    "Gate",
    "HeldReservations",
    "Ledger",
    "LedgerReads",
    "NotFound",
    "Outbox",
    "RecordResult",
    "ReportRow",
    "Store",
    "StoreUnavailable",
    "UpstreamObjects",
    "Watches",
    "printable",
]

# Whose events a read covers: one client, several, or every client (None).
Clients = str | tuple[str, ...] | None


class StoreUnavailable(Exception):
    """The backend cannot be reached or failed mid-operation; nothing was written."""


class DataRejected(StoreUnavailable):
    """The backend refused a value (a number out of its range, a character its
    text cannot hold): the same write fails again however often it is tried.
    A :class:`StoreUnavailable`, so a caller that knows only that one still
    fails the operation cleanly; the ledger writer sets such an event aside.
    ``sqlstate`` is the server's code for it, when it gave one."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class DriverErrors:
    """A backend's one choke point for its driver's exceptions: every call into
    the driver runs inside ``with ERRORS:``, and :meth:`translate` says what
    each exception becomes (None: it passes unchanged)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        mapped = None if exc is None else self.translate(exc)
        if mapped is not None:
            raise mapped from exc

    def translate(self, exc: BaseException) -> Exception | None:
        raise NotImplementedError


class Conflict(Exception):
    """The row already exists (a client id, a key prefix)."""


class NotFound(Exception):
    """A row the operation depends on does not exist."""


@dataclass(frozen=True, slots=True)
class RecordResult:
    """What recording one event did (:meth:`Ledger.record_many`): ``recorded``
    is False for a replay; ``state`` is its budget after it (None for a
    replay or a client without a budget)."""

    recorded: bool
    state: BudgetState | None


@dataclass(frozen=True, slots=True)
class ReportRow:
    key: str
    requests: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    cost: Decimal
    list_cost: Decimal = Decimal(0)  # cost at list price in the same currency: margin = cost - list_cost
    currency: str | None = None  # of cost and list_cost: a key spanning two currencies has a row in each

    @classmethod
    def total(cls, key: str, rows: list[ReportRow], currency: str | None) -> ReportRow:
        """The sum of ``rows`` (all in ``currency``) under one key."""
        return cls(
            key=key,
            currency=currency,
            requests=sum(r.requests for r in rows),
            input_tokens=sum(r.input_tokens for r in rows),
            output_tokens=sum(r.output_tokens for r in rows),
            cost_usd=sum((r.cost_usd for r in rows), Decimal(0)),
            cost=sum((r.cost for r in rows), Decimal(0)),
            list_cost=sum((r.list_cost for r in rows), Decimal(0)),
        )


@dataclass(frozen=True, slots=True)
class Admission:
    """A gate's answer: ``ok`` (the reservation is held), ``refused`` (with
    ``reason``: paused or a limit reached), ``busy`` (the limit is filled by
    reservations of calls in flight; nothing was reserved), or ``miss`` when it
    holds no current state for the client and must be loaded from the store."""

    outcome: Outcome
    reason: str | None = None


class Directory(Protocol):
    """Clients and their virtual keys (only each key's hash and prefix)."""

    async def create_client(self, client_id: str, name: str, now: datetime) -> Client:
        """Raises Conflict if the id is taken."""

    async def rename_client(self, client_id: str, name: str) -> None:
        """Raises NotFound if there is no such client."""

    async def set_terms(
        self, client_id: str, terms: Terms, currency: str, *, name: str | None = None
    ) -> None:
        """Replace a client's terms (and ``name``, when given) and keep its
        budget in ``currency`` (the one it pays in), in one transaction.
        Raises NotFound (no such client) or Conflict (its budget has spend or
        credits in another currency this period)."""

    async def set_limits(self, client_id: str, limits: tuple[Limit, ...]) -> None:
        """Replace a client's limits as a set. Raises NotFound if there is no such client."""

    async def get_client(self, client_id: str) -> Client | None:
        """The client, or None if there is none with that id."""

    async def list_clients(self) -> list[Client]:
        """Every client, by id."""

    async def create_key(self, key: ApiKey) -> ApiKey:
        """Store a key's hash. Raises NotFound (no such client) or Conflict (prefix taken)."""

    async def find_key(self, prefix: str) -> ApiKey | None:
        """The key with that prefix, revoked or not, with its client's terms;
        None if there is none."""

    async def list_keys(self, client_id: str) -> list[ApiKey]:
        """A client's keys, oldest first, revoked ones included."""

    async def revoke_key(self, prefix: str, now: datetime) -> ApiKey | None:
        """Mark a key revoked (idempotent); None if no key has that prefix."""

    async def portal_secret(self, client_id: str) -> str | None:
        """The secret the client's portal links are signed with; None if it has none."""

    async def set_portal_secret(self, client_id: str, secret: str, now: datetime, *, replace: bool) -> str:
        """Give the client ``secret`` for its portal links: in place of the one
        it has (``replace``, revoking every link made before), or only if it
        has none. Returns the secret it has now. Raises NotFound if there is
        no such client."""


class Budgets(Protocol):
    """One budget per client: its settings, counters and pause.

    Every write that changes a budget also puts the budget events it raises
    (a pause, a threshold crossed, a new period) in the outbox, in the same
    transaction. Reading a budget whose period has ended writes too: the
    rollover is persisted (with its ``reset`` event) before the state is
    returned, so every reader sees the same current period.
    """

    async def put_budget(self, config: BudgetConfig, now: datetime) -> BudgetState:
        """Create or replace a budget's settings, keeping its counters and pause.
        Raises NotFound if the client does not exist."""

    async def get_budget(self, client_id: str, now: datetime) -> BudgetState | None:
        """The budget, rolled over to the period containing ``now`` (a write,
        when a boundary has passed); None if the client has no budget."""

    async def list_budgets(self, now: datetime) -> list[BudgetState]:
        """Every budget, by client id, each rolled over as :meth:`get_budget`
        does: a read that writes every budget whose period has ended."""

    async def client_standings(self, now: datetime) -> list[tuple[str, str, float | None]]:
        """Every client's id, name and :func:`~taximeter.pricing.budgets.urgency`
        of its budget rolled over to ``now`` (None: no budget), by id, in one
        read that writes nothing: what an overview of every client orders by."""

    async def roll_due(self, now: datetime) -> int:
        """Start the new period of every budget whose period has ended by
        ``now`` (the sweeper's step, so a reset fires on time even for a
        client that makes no call); how many budgets rolled over."""

    async def delete_budget(self, client_id: str) -> bool:
        """Remove a client's budget; whether there was one."""

    async def change_budget(self, client_id: str, action: str, now: datetime) -> BudgetState | None:
        """Apply ``reset``, ``pause`` or ``resume`` atomically; None if no budget."""

    def observe(self, callback: Callable[[BudgetAlert], None]) -> None:
        """Call ``callback`` with every budget event the store writes."""

    async def add_credit(
        self, client_id: str, amount: Decimal, note: str, now: datetime
    ) -> tuple[Credit, BudgetState]:
        """Raise this period's cost limit by ``amount`` (lifting a limit pause
        it no longer reaches), with the credit kept; NotFound without a budget."""

    async def list_credits(self, client_id: str) -> list[Credit]:
        """A client's credits, newest first."""


class ExchangeRates(Protocol):
    """Units of a currency per USD, as data with a history: the newest rate of
    a currency is in force for calls admitted after it was set."""

    async def set_rate(self, currency: str, rate: Decimal, now: datetime) -> ExchangeRate:
        """Put ``rate`` in force from ``now`` on."""

    async def rate_history(self, currency: str | None = None) -> list[ExchangeRate]:
        """Every rate set (of ``currency``, or all), by currency, newest first."""

    async def current_rates(self) -> dict[str, ExchangeRate]:
        """The rate in force of each currency that has one."""


class Ledger(Protocol):
    """Writing the usage ledger: each call's event, counted in its budget."""

    async def record_many(self, events: list[UsageEvent]) -> list[RecordResult]:
        """Insert the events and add them to their clients' counters in one
        transaction (one commit, one fsync), pausing a budget when a limit is
        reached; a result per event, in order.

        Idempotent by ``request_id``: a replay changes nothing. An event from
        before its budget's current period is stored but not counted.
        """

    async def rebuild_daily_totals(self) -> None:
        """Sum the daily totals the reports read again from the events, with
        writers held off meanwhile (days before the first event held keep
        their totals)."""

    async def drop_events_before(self, cutoff: datetime) -> None:
        """Forget the events recorded before ``cutoff`` (on Postgres, whole
        UTC months: a month's partition is dropped once it ends by then) and
        what the export outbox still owed of them. The daily totals, and so
        the reports of whole days, stay."""

    async def quarantine(self, event: UsageEvent, error: str, now: datetime) -> None:
        """Set aside an event the store refused to record, with the error: kept
        in ``quarantined_events`` (its JSON, every character escaped), counted
        nowhere. Idempotent by request id. Raises DataRejected if even that
        row is refused."""


class LedgerReads(Protocol):
    """Reading the usage ledger: recent events, spend and reports."""

    async def list_events(
        self, client_id: str | None, limit: int, before: tuple[datetime, str] | None = None
    ) -> list[UsageEvent]:
        """At most ``limit`` events (of one client, or all), newest first (by
        time, then request id); with ``before`` (an event's time and request
        id), only the events after it in that order: the next page."""

    async def ledger_totals(self, client_id: str, since: datetime) -> tuple[int, int]:
        """Tokens and cost (nanos) of a client's events at or after ``since``."""

    async def limit_used(self, hold: Hold, client_id: str) -> int:
        """What the ledger counts on ``hold``'s limit in its window: tokens,
        cost (nanos) or requests of the client's events (of its end user and
        models, where the limit says), from the window's start on."""

    async def spend_by_api_type(self, client_id: str, since: datetime) -> dict[str, Decimal]:
        """Cost in the budget currency per api_type, for events at or after ``since``."""

    async def usage_report(
        self,
        client_id: Clients,
        start: datetime,
        end: datetime | None,
        group_by: str,
        *,
        top: int | None = None,
    ) -> list[ReportRow]:
        """Totals (of one client, of a tuple of them, or of every client: None)
        per ``api_type``, ``model``, ``day`` (UTC), ``end_user``,
        ``client_model`` (``client/model``), ``client_api_type``
        (``client/api_type``) or ``day_api_type`` (``day/api_type``) and
        currency over [start, end) (``end`` None: from ``start`` on), by key
        then currency; with ``top``, the ``top`` rows dearest at list price
        in USD, dearest first."""


class HeldReservations(Protocol):
    """Reservations held in the store itself, under each budget's row lock:
    what the store-held gate (the fallback when the gate is down) runs on."""

    async def reserve(self, reservation: Reservation, now: datetime) -> Admission:
        """The gates' admission rule under the budget's row lock (the fallback
        when the gate is unreachable); holds ``reservation`` if it admits."""

    async def hold_reservations(self, reservations: list[Reservation]) -> None:
        """Hold reservations a gate admitted before it went away, with no check
        (so the store's own admissions count them); idempotent per request."""

    async def extend_reservations(self, reservations: list[Reservation]) -> None:
        """Move the expiry of store-held reservations of live calls to theirs."""

    async def drop_reservation(self, request_id: str) -> None:
        """Forget a store-held reservation (its call settled or never went out)."""

    async def claim_expired_reservations(self, now: datetime, limit: int) -> list[Reservation]:
        """Take expired store-held reservations, each by exactly one caller."""

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the backend answers."""


class Outbox(Protocol):
    """Budget events waiting for their webhooks. The payload of each is
    built by :func:`taximeter.pricing.budgets.alert_payload` when the event
    is written; the outbox only keeps and hands out that JSON."""

    async def enqueue_alert_once(
        self, alert_id: str, client_id: str, kind: str, payload: str, now: datetime
    ) -> bool:
        """Put an event in the outbox unless ``alert_id`` is there already; whether it was put."""

    async def claim_alerts(self, now: datetime, limit: int, lease: timedelta) -> list[OutboxItem]:
        """Due, undelivered budget events, each leased to the caller for ``lease``."""

    async def finish_alert(
        self, item: OutboxItem, failed_urls: list[str], now: datetime, retry_at: datetime, error: str | None
    ) -> None:
        """Mark an event delivered, or schedule a retry of its failed webhooks."""


class Exports(Protocol):
    """What each billing sink is owed: every event recorded while the sink
    is configured (:meth:`export_to`), until the sink has acknowledged it."""

    def export_to(self, sinks: list[str]) -> None:
        """From now on, owe every recorded event to each of ``sinks``."""

    async def claim_exports(
        self, sink: str, now: datetime, limit: int, lease: timedelta
    ) -> tuple[list[UsageEvent], int]:
        """Up to ``limit`` due events for ``sink``, leased; and their most attempts."""

    async def finish_exports(
        self,
        sink: str,
        request_ids: list[str],
        *,
        delivered: bool,
        retry_at: datetime,
        error: str | None = None,
    ) -> None:
        """Forget what ``sink`` acknowledged, or make it due again at ``retry_at``."""

    async def exports_owed(self, sink: str) -> int:
        """How many events ``sink`` has not acknowledged."""


class UpstreamObjects(Protocol):
    """Who owns each object the upstream keeps (spec section 4b)."""

    async def own_objects(self, owned: list[OwnedObject]) -> None:
        """Record that each ``client_id`` created its ``object_id``, in one
        transaction; idempotent (an id already recorded keeps its first owner)."""

    async def owned_objects(self, object_ids: list[str]) -> dict[str, OwnedObject]:
        """The records of those of ``object_ids`` taximeter has seen created."""

    async def forget_object(self, object_id: str) -> None:
        """Drop an object's record once the upstream has deleted it."""

    async def show_object(self, object_id: str, shown: dict[str, Any]) -> None:
        """Keep ``shown`` as the object as the upstream shows it now (what a
        list answers with), the rest of what is kept of it unchanged."""

    async def list_objects(
        self, client_id: str, kind: str, *, limit: int, after: str | None, newest_first: bool
    ) -> list[OwnedObject]:
        """A client's objects of ``kind`` by creation (then id), from the one
        after ``after`` (an id of this client's; from the start when None)."""


class Watches(Protocol):
    """Objects that keep running upstream after their call, watched until
    they end (a batch, a background response), one process at a time."""

    async def watch(self, watch: Watch, next_check_at: datetime) -> None:
        """Watch ``watch`` from ``next_check_at``; idempotent by object id."""

    async def claim_watches(
        self, now: datetime, limit: int, lease: timedelta, *, object_id: str | None = None
    ) -> list[Watch]:
        """Up to ``limit`` watches due by ``now`` (or the one of ``object_id``,
        due or not), each taken by one caller for ``lease``: none is handed
        out again before its lease ends (in case its caller died)."""

    async def all_watches(self) -> list[Watch]:
        """Every object watched, leased or not (to hold them all again)."""

    async def watch_of(self, object_id: str) -> Watch | None:
        """The watch of ``object_id`` as it is, leased or not (None: not watched)."""

    async def check_again(self, object_id: str, next_check_at: datetime, checks: int) -> None:
        """The object still runs: its lease ends, and it is due again at ``next_check_at``."""

    async def renew_watch(self, object_id: str, lease_until: datetime) -> None:
        """The caller still works on it: its lease lasts until ``lease_until``."""

    async def end_watch(self, object_id: str) -> None:
        """The object ended and is charged: watched no more."""


class DashboardSessions(Protocol):
    """Dashboard sessions, known by the hash of their id."""

    async def create_session(self, id_hash: str, scope: str, now: datetime, expires_at: datetime) -> None:
        """Keep a dashboard session, known by the hash of its id, until
        ``expires_at``. Sessions already expired are purged."""

    async def session_valid(self, id_hash: str, scope: str, now: datetime) -> bool:
        """Whether the session exists, belongs to ``scope`` and has not expired."""

    async def end_session(self, id_hash: str) -> None:
        """Forget a session (log out); idempotent."""


class Store(
    Directory,
    Budgets,
    ExchangeRates,
    Ledger,
    LedgerReads,
    HeldReservations,
    Outbox,
    Exports,
    UpstreamObjects,
    Watches,
    DashboardSessions,
    Protocol,
):
    """Clients, keys, budgets and the usage ledger. The source of truth: every
    role above, plus the backend's lifecycle."""

    async def migrate(self) -> None:
        """Bring the schema up to date; safe when several processes start at once."""

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the backend answers."""

    async def schema_version(self) -> int:
        """The newest migration applied."""

    async def close(self) -> None: ...


class Gate(Protocol):
    """Admission: one round trip answers "may this client spend?".

    Holds a copy of each budget's state; the store stays the source of truth
    and the copy is rebuilt from it whenever the gate reports a miss.
    """

    async def admit(self, reservation: Reservation, now: datetime) -> Admission:
        """Check the client's budget and, if it admits, hold ``reservation``,
        atomically: concurrent calls each see the others' reservations."""

    async def load(self, client_id: str, state: BudgetState | None, now: datetime) -> None:
        """Replace the gate's copy, read from the store at ``now`` (None: the
        client has no budget)."""

    async def settle(
        self,
        event: UsageEvent,
        cost_nanos: int,
        now: datetime,
        *,
        keep_until: datetime | None = None,
        budget: bool = True,
    ) -> dict[str, int]:
        """Release the call's reservation (if still held) and add its actual
        usage, pausing at a limit, atomically. A copy that is missing or whose
        period has ended gets nothing added: it is rebuilt from the store.
        ``budget=False``: the copy was read from a store that already counts
        the call; only its limits get it.

        With ``keep_until``, a gate that outlives this process also keeps the
        event itself until :meth:`recorded` says the store has it; if that never
        comes (the process died first), :meth:`claim_unrecorded` hands it out
        after ``keep_until``, so a call already counted is never lost.

        Answers what each limit counter the call held has used now, by the
        hold's key (counters the gate does not keep are left out)."""

    async def recorded(self, events: list[UsageEvent]) -> None:
        """The store holds these events: forget the copies kept by :meth:`settle`."""

    async def claim_unrecorded(self, now: datetime, limit: int) -> list[UsageEvent]:
        """Events settled here whose record never arrived by their
        ``keep_until``; each handed to one caller (and kept again for the same
        time, in case that caller dies too), who records it without settling it."""

    async def extend(self, reservations: list[Reservation]) -> None:
        """Move the expiry of reservations still held by live calls to their
        (later) ``expires_at``, so the sweeper never charges a live call."""

    async def release(self, client_id: str, request_id: str) -> None:
        """Drop a reservation without charging it (the call never went out)."""

    async def restore(self, reservations: list[Reservation]) -> None:
        """Hold again reservations the gate lost (Redis flushed or restarted);
        one it still holds is not counted twice."""

    async def claim_expired(self, now: datetime, limit: int) -> list[Reservation]:
        """Take reservations whose time is up away from the gate; each is handed
        to exactly one caller, who must record and settle its estimated event."""

    async def load_limits(self, counted: list[tuple[Hold, int]], now: datetime) -> None:
        """Set limit counters the ledger counted again (after a ``miss`` for
        ``limits``), only where the gate has none."""

    async def limit_counters(self, holds: list[Hold]) -> list[tuple[int, int] | None]:
        """``(used, reserved)`` of each hold's counter; None where there is none."""

    def needs_refresh(self, client_id: str, now: datetime) -> bool:
        """Whether the copy is old enough to be reloaded in the background
        (changes made by another process reach a process-local copy this way)."""

    def forget_copies(self) -> None:
        """Another process changed budgets: drop every copy this process keeps
        of its own (each is read anew by the next call that needs it)."""

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


def printable(value: object, limit: int = 200) -> str:
    """``value`` as printable ASCII of at most ``limit`` characters, whatever
    it carried (NUL, a lone surrogate, a newline): for a log line or a key."""
    text = str(value)
    if not (text.isascii() and text.isprintable()):
        text = text.encode("ascii", "backslashreplace").decode("ascii")
        text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text[:limit]
