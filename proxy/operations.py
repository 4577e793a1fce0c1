"""What an operator can do, shared by the admin API and the CLI.

Validates input (raising InvalidInput naming the field, before anything is
written), calls the store, and refreshes the gate after every budget change
so that a pause or a new limit applies on the next request.
"""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from taximeter.pricing import budgets, limits, terms
from taximeter.pricing.models import ApiKey, BudgetState, Client, Credit, ExchangeRate, Hold, UsageEvent
from taximeter.pricing.times import utc_day_start
from taximeter.proxy.api_shapes import budget_json, unbudgeted_json
from taximeter.proxy.clock import Clock, system_clock
from taximeter.proxy.errors import ConflictError, InvalidInput, LinkExpired, NotFoundError
from taximeter.proxy.gateway import keys
from taximeter.proxy.gateway.exchange import USD
from taximeter.proxy.portal_links import (
    MAX_EXPIRES_S,
    MIN_EXPIRES_S,
    make_token,
    new_secret,
    portal_url,
    read_token,
)
from taximeter.store.base import Budgets, Conflict, Directory, ExchangeRates, LedgerReads, NotFound, ReportRow

__all__ = ["GROUPINGS", "MAX_EVENTS", "Operations", "OperatorStore", "parse_day"]

_CLIENT_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")  # the whole id: fullmatch, not a trailing "\n"
GROUPINGS = ("api_type", "model", "day", "end_user", "limit")
_FOREVER = (
    "%s counts every event since the first, and ledger_retention_months drops old ones: "
    "give it a period or window, or unset ledger_retention_months"
)
_CLIENTS_PER_READ = 500  # clients whose spend one grouped read sums
_YEARS = (1, 9998)  # times a report or cursor may name: a day either side stays a datetime
DEFAULT_LINK_S = 24 * 3600  # a portal link made without saying lasts a day
MAX_EVENTS = 10_000  # the most events one GET /admin/usage/events answers
_KEY_ATTEMPTS = 5

BudgetHook = Callable[[str, BudgetState | None, datetime], Awaitable[None]]


async def _no_hook(client_id: str, state: BudgetState | None, now: datetime) -> None:
    return None


def _no_key_hook(prefix: str) -> None:
    return None


def _no_rate_hook(rate: ExchangeRate) -> None:
    return None


async def _no_counters(holds: list[Hold]) -> list[tuple[int, int] | None]:
    return [None for _ in holds]


async def _nothing_pending() -> None:
    return None


@contextlib.contextmanager
def _named_field() -> Iterator[None]:
    """Input the pricing rules refuse, as the API's error naming its field
    (422; two limits of one name conflict: 409)."""
    try:
        yield
    except limits.DuplicateLimit as exc:
        raise ConflictError(exc.message, param=exc.field) from exc
    except budgets.BudgetInputError as exc:
        raise InvalidInput(exc.message, param=exc.field) from exc


def parse_day(value: str | None, field: str, default: datetime) -> datetime:
    """A ``YYYY-MM-DD`` date or RFC 3339 time as a UTC instant."""
    if not value:
        return default
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        when = (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)
        if not _YEARS[0] <= when.year <= _YEARS[1]:
            raise ValueError("out of range")
    except (ValueError, OverflowError) as exc:
        text = f"{field} must be a date (YYYY-MM-DD) or RFC 3339 time, years {_YEARS[0]} to {_YEARS[1]}"
        raise InvalidInput(text, param=field) from exc
    return when


class OperatorStore(Directory, Budgets, ExchangeRates, LedgerReads, Protocol):
    """The parts of the store an operator works on: clients and keys, budgets,
    exchange rates, and reads of the ledger (never its writes, reservations or
    sessions)."""


class Operations:
    def __init__(
        self,
        store: OperatorStore,
        *,
        timezone: str,
        currency: str,
        clock: Clock = system_clock,
        on_budget_change: BudgetHook = _no_hook,
        flush_ledger: Callable[[], Awaitable[None]] = _nothing_pending,
        on_key_revoked: Callable[[str], None] = _no_key_hook,
        on_terms_changed: Callable[[str], None] = _no_key_hook,
        on_rate_set: Callable[[ExchangeRate], None] = _no_rate_hook,
        first_rate: Decimal | None = None,
        read_counters: Callable[[list[Hold]], Awaitable[list[tuple[int, int] | None]]] = _no_counters,
        announce: Callable[[], Awaitable[None]] = _nothing_pending,
        ledger_retention_months: int | None = None,
    ) -> None:
        self._store = store  # private: admin, dashboard and cli ask Operations, never its store
        # Old events are dropped: nothing may count from a client's first one.
        self._trims_ledger = ledger_retention_months is not None
        self.timezone = timezone
        self.currency = currency
        self.clock = clock
        self._on_budget_change = on_budget_change
        # Reads and budget changes first wait for this process's pending
        # events, so a status includes every answered call and a reset
        # cannot be followed by charges from before it.
        self.flush_ledger = flush_ledger
        # A revoked key stops working at once in this process (in others within key_cache_s).
        self._on_key_revoked = on_key_revoked
        # New terms or rates apply from the next call in this process (in
        # others within key_cache_s and sweep_interval_s).
        self._on_terms_changed = on_terms_changed
        self._on_rate_set = on_rate_set
        self._read_counters = read_counters  # the gate's limit counters (None: the gate has none)
        # Tells every other process (CLI, workers, hosts) that something
        # admission reads has changed: their next call reads it anew.
        self._announce = announce
        self.first_rate = first_rate  # the exchange_rate setting: the server currency's rate until one is set

    async def _budget_changed(self, client_id: str, state: BudgetState | None, now: datetime) -> None:
        """This process's copy follows the change; every other process is
        told of it, even when this one's copy could not be rebuilt now."""
        try:
            await self._on_budget_change(client_id, state, now)
        finally:
            await self._announce()

    # -- clients and keys --------------------------------------------------------

    async def create_client(self, client_id: Any, name: Any = None) -> Client:
        if not isinstance(client_id, str) or not _CLIENT_ID.fullmatch(client_id):
            raise InvalidInput(
                "id must be a slug: lowercase letters, digits, '-' or '_', at most 63 characters",
                param="id",
            )
        with _named_field():
            name = terms.client_name(client_id if name is None else name)
        try:
            return await self._store.create_client(client_id, name, self.clock())
        except Conflict as exc:
            raise ConflictError(f"client {client_id!r} already exists", param="id") from exc

    async def client(self, client_id: str) -> Client:
        client = await self.find_client(client_id)
        if client is None:
            raise NotFoundError(f"no client {client_id!r}", param="client_id")
        return client

    async def find_client(self, client_id: str) -> Client | None:
        if not _possible(client_id):
            return None
        return await self._store.get_client(client_id)

    async def clients(self) -> list[Client]:
        """Every client, by id."""
        return await self._store.list_clients()

    async def rename_client(self, client_id: str, name: str) -> None:
        """Raises the store's NotFound if there is no such client."""
        await self._store.rename_client(client_id, name)

    async def update_client(self, client_id: str, data: Any) -> Client:
        """Change a client's name and terms (PATCH: fields left out stay)."""
        client = await self.client(client_id)
        with _named_field():
            name, new = terms.terms_from_json(client.terms, data)
        currency = new.currency or self.currency
        if new.currency != client.terms.currency and not await self._has_rate(currency):
            raise ConflictError(
                f"no exchange rate for {currency}: set one first (PUT /admin/rates/{currency})",
                param="currency",
            )
        await self.flush_ledger()
        try:
            await self._store.set_terms(client_id, new, currency, name=name)
        except Conflict as exc:
            raise ConflictError(str(exc), param="currency") from exc
        self._on_terms_changed(client_id)
        await self._announce()
        return await self.client(client_id)

    async def _has_rate(self, currency: str) -> bool:
        if currency == USD or (currency == self.currency and self.first_rate is not None):
            return True
        return currency in await self._store.current_rates()

    # -- exchange rates and credits ------------------------------------------------------

    async def rates(self, currency: str | None = None) -> list[ExchangeRate]:
        """Every rate set, by currency, newest first (the first of each is in force)."""
        if currency is not None:
            with _named_field():
                currency = terms.parse_currency(currency)
        return await self._store.rate_history(currency)

    async def set_rate(self, currency: str, data: Any) -> ExchangeRate:
        """Put a rate in force for calls admitted from now on."""
        with _named_field():
            currency = terms.parse_currency(currency)
        if currency == USD:
            raise InvalidInput("USD is the currency of list prices: its rate is always 1", param="currency")
        with _named_field():
            value = terms.rate_from_json(data)
        rate = await self._store.set_rate(currency, value, self.clock())
        self._on_rate_set(rate)
        await self._announce()
        return rate

    async def credits(self, client_id: str) -> list[Credit]:
        await self.client(client_id)
        return await self._store.list_credits(client_id)

    async def add_credit(self, client_id: str, data: Any) -> tuple[Credit, BudgetState]:
        """Raise this period's cost limit (lifting a limit pause)."""
        await self.client(client_id)
        with _named_field():
            amount, note = terms.credit_from_json(data)
        found = await self.find_budget(client_id)
        if found is None:
            raise NotFoundError(f"client {client_id!r} has no budget", param="client_id")
        limit = budgets.cost_limit(found)
        if limit is None:
            raise ConflictError(
                f"client {client_id!r} has no budget with a cost limit to credit", param="client_id"
            )
        if limit + amount > budgets.MAX_COST_LIMIT:  # the amount is fine; with this budget it is not
            raise ConflictError(
                f"would raise this period's cost limit past {budgets.MAX_COST_LIMIT}", param="amount"
            )
        await self.flush_ledger()
        now = self.clock()
        try:
            credit, state = await self._store.add_credit(client_id, amount, note, now)
        except NotFound as exc:
            raise NotFoundError(f"client {client_id!r} has no budget", param="client_id") from exc
        await self._budget_changed(client_id, state, now)
        return credit, state

    # -- the tenant portal (section 8) ---------------------------------------------------

    async def portal_link(self, client_id: str, data: Any, base: str) -> tuple[str, datetime]:
        """A new link to the client's portal (at ``base``, this server's
        address) and when it expires: ``{"expires_in_s": seconds}`` from now
        (default a day), signed with the client's portal secret (made the
        first time)."""
        client = await self.client(client_id)
        expires_in = _expires_in(data)
        now = self.clock()
        secret = await self._store.portal_secret(client.id)
        if secret is None:
            secret = await self._store.set_portal_secret(client.id, new_secret(), now, replace=False)
        # A token names whole seconds.
        expires_at = (now + timedelta(seconds=expires_in)).replace(microsecond=0)
        return portal_url(base, make_token(client.id, expires_at, secret)), expires_at

    async def revoke_portal_links(self, client_id: str) -> None:
        """A new portal secret for the client: every link made so far stops working."""
        client = await self.client(client_id)
        await self._store.set_portal_secret(client.id, new_secret(), self.clock(), replace=True)

    async def portal_client(self, text: str) -> Client:
        """The client a portal link's token is for. Raises NotFoundError for
        a token that is not one of ours (or was revoked), LinkExpired for one
        past its time: the same answer whether or not the client exists."""
        token = read_token(text)
        if token is None:
            raise NotFoundError("this link is not valid")
        secret = await self._store.portal_secret(token.client_id)
        if secret is None or not token.signed_with(secret):
            raise NotFoundError("this link is not valid")
        now = self.clock()
        if token.expires_at <= now:
            raise LinkExpired("this link has expired")
        if token.expires_at > now + timedelta(seconds=MAX_EXPIRES_S + 60):
            raise NotFoundError("this link is not valid")  # no link is made to live that long
        return await self.client(token.client_id)

    # -- limits (section 6b) ------------------------------------------------------------

    async def set_limits(self, client_id: str, data: Any) -> list[dict[str, Any]]:
        """Replace a client's limits as a set; their status."""
        await self.client(client_id)
        with _named_field():
            declared = limits.limits_from_json(data)
        for i, limit in enumerate(declared):
            if self._trims_ledger and limit.window == "none" and limit.metric != "concurrent":
                raise InvalidInput(_FOREVER % "a limit with no window", param=f"limits[{i}].window")
        await self._store.set_limits(client_id, declared)
        self._on_terms_changed(client_id)
        await self._announce()
        return await self.limits(client_id)

    async def limits(self, client_id: str, end_user: str | None = None) -> list[dict[str, Any]]:
        """Each limit with what is used and reserved in its window now (of
        ``end_user``, for limits per end user) and when the window resets."""
        client = await self.client(client_id)
        if not client.terms.limits:
            return []
        state = await self.find_budget(client_id)
        return await self.limits_of(client, state, end_user)

    async def limits_of(
        self, client: Client, state: BudgetState | None, end_user: str | None = None
    ) -> list[dict[str, Any]]:
        """:meth:`limits` of a client and budget already read (no read of either again)."""
        client_id, declared = client.id, client.terms.limits
        if not declared:
            return []
        timezone = state.config.timezone if state is not None else self.timezone
        holds = limits.status_holds(
            declared, client_id=client_id, end_user=end_user, timezone=timezone, now=self.clock()
        )
        counters = await self._read_counters(list(holds))
        shown = []
        if None in counters:
            await self.flush_ledger()  # what the ledger holds is read for those
        for hold, limit, counter in zip(holds, declared, counters, strict=True):
            if counter is None:  # not in the gate: what the ledger holds, nothing in flight
                counter = (
                    await self._store.limit_used(hold, client_id) if limit.rebuilt_from_ledger else 0,
                    0,
                )
            shown.append(limits.status_json(hold, counter[0], counter[1], limit, self.clock()))
        return shown

    async def keys(self, client_id: str) -> list[ApiKey]:
        """The client's keys, oldest first, revoked ones included."""
        return await self._store.list_keys(client_id) if _possible(client_id) else []

    async def find_key(self, prefix: str) -> ApiKey | None:
        return await self._store.find_key(prefix) if _possible_text(prefix) else None

    async def create_key(self, client_id: str) -> tuple[str, ApiKey]:
        """A new key for the client: the key itself (shown once) and its record."""
        await self.client(client_id)
        for _ in range(_KEY_ATTEMPTS):  # a prefix collision is astronomically rare; retry anyway
            secret = keys.generate_key()
            record = ApiKey(keys.key_prefix(secret), client_id, keys.hash_key(secret), self.clock())
            try:
                return secret, await self._store.create_key(record)
            except Conflict:
                continue
            except NotFound as exc:
                raise NotFoundError(f"no client {client_id!r}", param="client_id") from exc
        raise ConflictError("could not allocate a unique key prefix")

    async def revoke_key(self, prefix: str) -> ApiKey:
        key = await self._store.revoke_key(prefix, self.clock()) if _possible_text(prefix) else None
        if key is None:
            raise NotFoundError(f"no key with prefix {prefix!r}", param="prefix")
        self._on_key_revoked(prefix)
        await self._announce()
        return key

    # -- budgets -------------------------------------------------------------------

    async def put_budget(self, client_id: str, data: Any) -> BudgetState:
        client = await self.client(client_id)
        currency = client.terms.currency or self.currency  # a budget counts what its client pays in
        with _named_field():
            config = budgets.config_from_json(client_id, data, timezone=self.timezone, currency=currency)
        if self._trims_ledger and config.period == "none":
            raise InvalidInput(_FOREVER % "a lifetime budget", param="period")
        await self.flush_ledger()
        now = self.clock()
        state = await self._store.put_budget(config, now)
        await self._budget_changed(client_id, state, now)
        return state

    async def budget(self, client_id: str) -> BudgetState:
        await self.flush_ledger()
        state = await self.find_budget(client_id)
        if state is None:
            raise NotFoundError(f"client {client_id!r} has no budget", param="client_id")
        return state

    async def find_budget(self, client_id: str) -> BudgetState | None:
        """The budget as the store holds it now, without waiting for pending
        events: for comparing its settings, not its counters."""
        if not _possible(client_id):
            return None
        return await self._store.get_budget(client_id, self.clock())

    async def standings(self) -> list[tuple[str, str, float | None]]:
        """Every client's id, name and how close its budget is to a limit
        now (None: no budget)."""
        await self.flush_ledger()
        now = self.clock()
        await self._store.roll_due(now)  # a period ended since the last sweep: rolled first
        return await self._store.client_standings(now)

    async def budgets(self) -> list[BudgetState]:
        await self.flush_ledger()
        return await self._store.list_budgets(self.clock())

    async def change_budget(self, client_id: str, action: str) -> BudgetState:
        await self.flush_ledger()
        now = self.clock()
        state = await self._store.change_budget(client_id, action, now) if _possible(client_id) else None
        if state is None:
            raise NotFoundError(f"client {client_id!r} has no budget", param="client_id")
        await self._budget_changed(client_id, state, now)
        return state

    async def delete_budget(self, client_id: str) -> None:
        await self.flush_ledger()
        if not (_possible(client_id) and await self._store.delete_budget(client_id)):
            raise NotFoundError(f"client {client_id!r} has no budget", param="client_id")
        await self._budget_changed(client_id, None, self.clock())

    async def events(self, client_id: str | None, limit: int) -> list[UsageEvent]:
        return (await self.events_page(client_id, limit))[0]

    async def events_page(
        self, client_id: str | None, limit: int, cursor: str | None = None
    ) -> tuple[list[UsageEvent], str | None]:
        """At most ``limit`` events, newest first, after ``cursor`` (a page's
        ``next``); and the next page's cursor (None: this was the last)."""
        before = None if cursor is None else read_cursor(cursor)
        await self.flush_ledger()
        if client_id is not None and not _possible(client_id):
            return [], None
        page = await self._store.list_events(client_id, limit + 1, before)
        if len(page) <= limit:
            return page, None
        return page[:limit], cursor_of(page[limit - 1])

    async def all_events(self, client_id: str | None, page: int = 1000) -> AsyncIterator[list[UsageEvent]]:
        """Every event recorded by now, newest first, ``page`` at a time
        (memory stays flat however long the ledger is). An event charged
        late with an earlier time (a reservation the sweeper charged) is in
        a later export, not in one already past its time."""
        await self.flush_ledger()
        if client_id is not None and not _possible(client_id):
            return
        before: tuple[datetime, str] | None = None
        while True:
            events = await self._store.list_events(client_id, page, before)
            if events:
                yield events
            if len(events) < page:
                return
            before = (events[-1].created_at, events[-1].request_id)

    async def spend_by_api_type(self, client_id: str, since: datetime) -> dict[str, Decimal]:
        """Cost in the budget currency per api_type since ``since``."""
        return await self._store.spend_by_api_type(client_id, since) if _possible(client_id) else {}

    async def spend_of_clients(self, since: dict[str, datetime]) -> dict[str, dict[str, Decimal]]:
        """:meth:`spend_by_api_type` of many clients (each since its own
        time): one grouped read of just those clients per distinct time."""
        by_start: dict[datetime, list[str]] = {}
        for client_id, start in since.items():
            if _possible(client_id):
                by_start.setdefault(start, []).append(client_id)
        spent: dict[str, dict[str, Decimal]] = {client_id: {} for client_id in since}
        for start, wanted in by_start.items():
            for at in range(0, len(wanted), _CLIENTS_PER_READ):
                chunk = tuple(wanted[at : at + _CLIENTS_PER_READ])
                for row in await self._store.usage_report(chunk, start, None, "client_api_type"):
                    client_id, api_type = row.key.split("/", 1)
                    kinds = spent[client_id]
                    kinds[api_type] = kinds.get(api_type, Decimal(0)) + row.cost
        return {client_id: dict(sorted(kinds.items())) for client_id, kinds in spent.items()}

    async def status_json(self, state: BudgetState) -> dict[str, Any]:
        """A budget's status, with its client's limits."""
        spend = await self.spend_by_api_type(state.client_id, state.period_start)
        status = budget_json(state, spend, self.clock())
        return {**status, "limits": await self.limits_of(await self.client(state.client_id), state)}

    async def statuses_json(self) -> list[dict[str, Any]]:
        """Every budget's status, limits left out (a read of each client and
        its counters); their spend in one grouped read per period start."""
        states = await self.budgets()
        spent = await self.spend_of_clients({s.client_id: s.period_start for s in states})
        now = self.clock()
        return [budget_json(s, spent[s.client_id], now) for s in states]

    async def unbudgeted_status(self, client_id: str) -> dict[str, Any]:
        """The status of a client with no budget: its spend this calendar month."""
        client = await self.client(client_id)
        start, end = budgets.period_bounds("monthly", self.timezone, self.clock())
        assert end is not None  # a month ends
        await self.flush_ledger()
        tokens, _ = await self._store.ledger_totals(client.id, start)
        spend = await self._store.spend_by_api_type(client.id, start)
        currency = client.terms.currency or self.currency
        return {
            **unbudgeted_json(
                client.id,
                currency=currency,
                timezone=self.timezone,
                month=(start, end),
                tokens=tokens,
                spend=spend,
            ),
            "limits": await self.limits_of(client, None),
        }

    # -- usage -----------------------------------------------------------------------

    async def usage_report(
        self, client_id: str | None, start: str | None, end: str | None, group_by: str
    ) -> tuple[datetime, datetime, list[ReportRow]]:
        if group_by not in GROUPINGS:
            raise InvalidInput(f"group_by must be one of {', '.join(GROUPINGS)}", param="group_by")
        now = self.clock()
        # By default the 30 whole UTC days before today, and today so far.
        start_at = parse_day(start, "from", utc_day_start(now - timedelta(days=30)))
        end_at = parse_day(end, "to", now + timedelta(seconds=1))
        if end is not None and len(end) == 10:
            end_at += timedelta(days=1)  # a bare date includes that whole day
        if end_at <= start_at:
            raise InvalidInput("to must be after from", param="to")
        if group_by == "limit":
            await self.flush_ledger()
            return start_at, end_at, await self._limit_report(client_id, start_at, end_at)
        return start_at, end_at, await self.usage_rows(client_id, start_at, end_at, group_by)

    async def usage_rows(
        self, client_id: str | None, start: datetime, end: datetime, group_by: str, *, top: int | None = None
    ) -> list[ReportRow]:
        """The ledger's totals over [start, end) by any grouping the store
        knows (the pages also stack days by api_type: ``day_api_type``);
        with ``top``, only the dearest ``top`` keys."""
        await self.flush_ledger()
        if client_id is not None and not _possible(client_id):
            return []
        return await self._store.usage_report(client_id, start, end, group_by, top=top)

    async def _limit_report(self, client_id: str | None, start: datetime, end: datetime) -> list[ReportRow]:
        """Per limit, the usage of the calls it covers (its models, every end
        user), in the order declared: keyed by the limit's name, or by
        ``client/name`` over every client."""
        owners = [await self.client(client_id)] if client_id is not None else await self.clients()
        if not any(owner.terms.limits for owner in owners):
            return []
        by_model: dict[str, list[tuple[str, ReportRow]]] = {}
        for row in await self._store.usage_report(client_id, start, end, "client_model"):
            owner_id, model = row.key.split("/", 1)
            by_model.setdefault(owner_id, []).append((model, row))
        report = []
        for owner in owners:
            for limit in owner.terms.limits:
                key = limit.name if client_id is not None else f"{owner.id}/{limit.name}"
                covered = [row for model, row in by_model.get(owner.id, []) if limit.covers(model)]
                currencies = sorted({r.currency for r in covered if r.currency}) or [
                    owner.terms.currency or self.currency
                ]
                for currency in currencies:
                    same = [r for r in covered if r.currency == currency]
                    report.append(ReportRow.total(key, same, currency))
        return report

    async def report_currency(self, client_id: str | None, rows: list[ReportRow]) -> str | None:
        """The currency of a report's costs: its rows' one currency; with no
        rows the client's (or the default); None when rows are in several."""
        found = {r.currency for r in rows}
        if len(found) > 1:
            return None
        if found:
            return found.pop()
        client = await self.find_client(client_id) if client_id is not None else None
        return (client.terms.currency if client is not None else None) or self.currency


def cursor_of(event: UsageEvent) -> str:
    """The cursor of the page after ``event``: its time and request id, opaque."""
    text = f"{event.created_at.astimezone(UTC).isoformat()}\n{event.request_id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def read_cursor(cursor: str) -> tuple[datetime, str]:
    """A cursor's time and request id; InvalidInput for anything not made by :func:`cursor_of`."""
    try:
        if len(cursor) > 1000:
            raise ValueError("too long")
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, request_id = text.split("\n")
        moment = datetime.fromisoformat(when)
        if moment.tzinfo is None or not request_id or not request_id.isprintable() or len(request_id) > 600:
            raise ValueError("not a cursor")
        moment = moment.astimezone(UTC)
        if not _YEARS[0] <= moment.year <= _YEARS[1]:
            raise ValueError("out of range")
    except (ValueError, OverflowError) as exc:  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise InvalidInput("cursor is not one this API gave", param="cursor") from exc
    return moment, request_id


def _expires_in(data: Any) -> int:
    """A portal link's ``expires_in_s``: whole seconds, a minute to a year."""
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object", status=400)
    unknown = sorted(set(data) - {"expires_in_s"})
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r}", param=unknown[0])
    value = data.get("expires_in_s", DEFAULT_LINK_S)
    if isinstance(value, float) and value.is_integer():  # JSON's 3600.0 is a whole number too
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_EXPIRES_S <= value <= MAX_EXPIRES_S:
        text = f"expires_in_s must be whole seconds from {MIN_EXPIRES_S} to {MAX_EXPIRES_S}"
        raise InvalidInput(text, param="expires_in_s")
    return value


def _possible(client_id: str) -> bool:
    """Whether a client could have this id: one that could not (control
    characters, a NUL no database text holds) has nothing, without asking."""
    return _CLIENT_ID.fullmatch(client_id) is not None


def _possible_text(value: str) -> bool:
    return value.isprintable() and len(value) <= 256
