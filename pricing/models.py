"""The domain types: what the stores and gates take and return (never driver rows)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal
from fnmatch import fnmatchcase
from typing import Any, Literal

import orjson

from taximeter.pricing.money import quantize

__all__ = [
    "ApiKey",
    "BudgetAlert",
    "BudgetConfig",
    "BudgetState",
    "Client",
    "Credit",
    "ExchangeRate",
    "Hold",
    "Limit",
    "OutboxItem",
    "Outcome",
    "OwnedObject",
    "Reservation",
    "Terms",
    "UsageEvent",
    "Watch",
]

# A gate's answer to "may this call start?": held, refused (paused or over a
# limit), busy (only calls in flight fill the limit) or miss (no state loaded).
Outcome = Literal["ok", "refused", "busy", "miss"]


# Windows a refusal in which is worth retrying soon: rate limits, not spend caps.
RATE_WINDOWS = frozenset({"minute", "hour"})


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit of a client. ``limit`` is tokens, nanos of the client's
    currency, requests or calls in flight, by ``metric``."""

    name: str
    metric: str
    limit: int
    window: str = "none"
    per: str = "client"  # or end_user: each end user its own counter
    models: tuple[str, ...] | None = None  # globs; None: every model
    # What its counter counts, short: a limit redefined under the same name
    # (another metric, window, scope or models) starts a counter of its own;
    # one only raised or lowered keeps counting. Worked out once, here.
    shape: str = field(init=False, repr=False, compare=False, default="")

    def __post_init__(self) -> None:
        models = ",".join(sorted(self.models)) if self.models is not None else "*"
        text = f"{self.metric}|{self.window}|{self.per}|{models}"
        object.__setattr__(self, "shape", hashlib.sha256(text.encode()).hexdigest()[:8])

    def covers(self, model: str) -> bool:
        """Whether calls of ``model`` count here."""
        return self.models is None or any(fnmatchcase(model, glob) for glob in self.models)

    @property
    def rate(self) -> bool:
        """A refusal by it is a rate limit (retry soon), not a spent cap."""
        return self.window in RATE_WINDOWS or self.metric in ("requests", "concurrent")

    @property
    def rebuilt_from_ledger(self) -> bool:
        """Whether a lost counter is worth counting again from the ledger: a
        spend cap of a day or longer is; a rate window soon starts afresh and
        calls in flight are not in the ledger."""
        return self.metric != "concurrent" and self.window not in RATE_WINDOWS


@dataclass(frozen=True, slots=True)
class Hold:
    """What one admitted call holds on one limit: the counter it counts in
    (``key``, unique per client, limit, end user and window), the amount
    reserved, and when the window ends (None: never)."""

    key: str
    limit: Limit
    amount: int
    window_start: datetime
    window_end: datetime | None
    end_user: str

    def used_by(self, tokens: int, cost_nanos: int) -> int:
        """What a settled call of ``tokens`` and ``cost_nanos`` counts here."""
        metric = self.limit.metric
        if metric == "tokens":
            return tokens
        if metric == "cost":
            return cost_nanos
        return 1 if metric == "requests" else 0  # concurrent: only calls in flight count


@dataclass(frozen=True, slots=True)
class Terms:
    """What a client's calls cost it: list price * the rate of ``currency``
    (None: the server's currency) * ``markup``, and the models it may call
    (globs; None: all)."""

    currency: str | None = None
    markup: Decimal = Decimal(1)
    models_allowed: tuple[str, ...] | None = None
    limits: tuple[Limit, ...] = ()  # beside the budget (section 6b)
    timezone: str | None = None  # its budget's, where daily and longer windows start; None: the server's


@dataclass(frozen=True, slots=True)
class Client:
    id: str
    name: str
    created_at: datetime
    terms: Terms = Terms()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A virtual key as stored: its display prefix and a hash, never the key;
    with its client's terms when it was looked up to authenticate a call."""

    prefix: str
    client_id: str
    key_hash: str
    created_at: datetime
    revoked: bool = False
    terms: Terms = Terms()


@dataclass(frozen=True, slots=True)
class ExchangeRate:
    """Units of ``currency`` per USD, in force for calls admitted from ``since``."""

    currency: str
    rate: Decimal
    since: datetime


@dataclass(frozen=True, slots=True)
class Credit:
    """A top-up: raises the cost limit of the budget period it was given in."""

    id: str
    client_id: str
    amount: Decimal
    note: str
    created_at: datetime
    period_start: datetime


@dataclass(frozen=True, slots=True)
class BudgetConfig:
    """What an operator sets. ``mode`` is ``tokens``, ``cost`` or ``both``;
    ``cost_limit`` is in ``currency``."""

    client_id: str
    mode: str
    period: str
    timezone: str
    currency: str
    token_limit: int | None = None
    cost_limit: Decimal | None = None
    pause_at_limit: bool = True
    alert_thresholds: tuple[Decimal, ...] = (Decimal("0.8"), Decimal("0.9"), Decimal("1.0"))


@dataclass(frozen=True, slots=True)
class BudgetState:
    """A budget with its counters for the current period.

    ``cost_used_nanos`` is in nano-units of the budget currency. ``version``
    grows with every change, so a cache can tell newer state from older.
    """

    config: BudgetConfig
    period_start: datetime
    tokens_used: int = 0
    cost_used_nanos: int = 0
    paused: bool = False
    pause_reason: str | None = None
    version: int = 0
    alerts_fired: tuple[str, ...] = ()  # "metric:threshold" fired this period
    credit_nanos: int = 0  # credits given this period: added to the cost limit

    @property
    def client_id(self) -> str:
        return self.config.client_id


@dataclass(frozen=True, slots=True)
class BudgetAlert:
    """Something an operator is told about: a threshold crossed
    (``threshold``), the budget paused (``paused``) or a new period begun
    (``reset``)."""

    kind: str
    client_id: str
    metric: str | None = None  # tokens or cost, for thresholds
    threshold: Decimal | None = None
    pause_reason: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A budget event waiting for delivery to the webhooks in ``pending_urls``
    (None: all of them, not yet attempted)."""

    id: str
    client_id: str
    kind: str
    payload: str
    attempts: int
    pending_urls: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One metered call, as the ledger records it. Idempotent by ``request_id``."""

    request_id: str
    client_id: str
    api_type: str
    model: str
    endpoint: str
    status: int
    created_at: datetime
    currency: str
    exchange_rate: Decimal
    cost_usd: Decimal = Decimal(0)
    cost: Decimal = Decimal(0)
    end_user: str | None = None
    conversation: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    characters: int = 0
    audio_seconds: Decimal = field(default_factory=lambda: Decimal(0))
    images: int = 0
    estimated: bool = False
    unpriced: bool = False
    service_tier: str | None = None  # the tier the response reported
    tool_calls: tuple[tuple[str, int], ...] = ()  # built-in tool calls, (tool, count) by tool
    price_source: str | None = None  # the catalog that priced it, and any note on how
    upstream: str | None = None  # the upstream that served it
    latency_ms: int | None = None  # from the request to its settlement
    markup: Decimal = Decimal(1)  # the client's: cost = cost_usd * exchange_rate * markup
    batch_id: str | None = None  # the batch a line of which this is

    @property
    def list_cost(self) -> Decimal:
        """What the call cost at list price in ``currency``: ``cost`` less the markup."""
        return quantize(self.cost_usd * self.exchange_rate)

    @property
    def tokens(self) -> int:
        """Tokens counted against a budget: input plus output."""
        return self.input_tokens + self.output_tokens

    def to_json(self) -> str:
        """Compact JSON (money and seconds as strings, time as ISO 8601).
        On every admission's path: no ``asdict`` (it deep-copies each value)."""
        data = {name: getattr(self, name) for name in _EVENT_FIELDS}
        for name in _DECIMAL_FIELDS:
            data[name] = str(data[name])
        data["created_at"] = self.created_at.isoformat()
        return orjson.dumps(data).decode()

    @classmethod
    def from_json(cls, text: str) -> UsageEvent:
        data = orjson.loads(text)
        for name in _DECIMAL_FIELDS:
            if name in data:  # markup: absent from events written before it existed
                data[name] = Decimal(data[name])
        data["created_at"] = datetime.fromisoformat(data["created_at"])
        data["tool_calls"] = tuple((str(t), int(n)) for t, n in data.get("tool_calls", ()))
        return cls(**{k: v for k, v in data.items() if k in _EVENT_FIELD_SET})


_EVENT_FIELDS = tuple(f.name for f in fields(UsageEvent))
_EVENT_FIELD_SET = frozenset(_EVENT_FIELDS)
_DECIMAL_FIELDS = ("cost_usd", "cost", "exchange_rate", "audio_seconds", "markup")


@dataclass(frozen=True, slots=True)
class Reservation:
    """What an admitted call holds against its budget until it settles.

    ``event`` is the call as it would be recorded if its process died: its
    estimated usage and cost, flagged ``estimated``. ``cost_nanos`` is in the
    budget currency. A reservation not settled by ``expires_at`` is charged at
    its estimate by whichever process sweeps it first.
    """

    event: UsageEvent
    cost_nanos: int
    expires_at: datetime
    holds: tuple[Hold, ...] = ()  # what it holds on each limit that applies to it

    @property
    def request_id(self) -> str:
        return self.event.request_id

    @property
    def client_id(self) -> str:
        return self.event.client_id

    @property
    def tokens(self) -> int:
        return self.event.tokens

    def to_json(self) -> str:
        """The reservation whole, holds and all, for a store to keep."""
        return orjson.dumps(
            {
                "event": self.event.to_json(),
                "cost_nanos": self.cost_nanos,
                "expires_at": self.expires_at.isoformat(),
                "holds": [
                    {
                        "key": h.key,
                        "amount": h.amount,
                        "window_start": h.window_start.isoformat(),
                        "window_end": None if h.window_end is None else h.window_end.isoformat(),
                        "end_user": h.end_user,
                        "limit": {
                            "name": h.limit.name,
                            "metric": h.limit.metric,
                            "limit": h.limit.limit,
                            "window": h.limit.window,
                            "per": h.limit.per,
                            "models": None if h.limit.models is None else list(h.limit.models),
                        },
                    }
                    for h in self.holds
                ],
            }
        ).decode()

    @classmethod
    def from_json(cls, text: str) -> Reservation:
        data = orjson.loads(text)
        holds = []
        for h in data["holds"]:
            lim = h["limit"]
            models = None if lim["models"] is None else tuple(lim["models"])
            limit = Limit(lim["name"], lim["metric"], int(lim["limit"]), lim["window"], lim["per"], models)
            end = None if h["window_end"] is None else datetime.fromisoformat(h["window_end"])
            start = datetime.fromisoformat(h["window_start"])
            holds.append(Hold(h["key"], limit, int(h["amount"]), start, end, h["end_user"]))
        return cls(
            UsageEvent.from_json(data["event"]),
            int(data["cost_nanos"]),
            datetime.fromisoformat(data["expires_at"]),
            tuple(holds),
        )


@dataclass(frozen=True, slots=True)
class OwnedObject:
    """An object the upstream keeps (a stored response, a file, a batch...),
    created through taximeter by ``client_id`` on ``upstream``: the only
    client that may name it (spec section 4b)."""

    object_id: str
    kind: str  # response, chat_completion, file, upload, batch, conversation, vector_store, container
    client_id: str
    upstream: str
    created_at: datetime
    # What taximeter keeps of it (JSON): a file's object as the upstream gave
    # it (``object``) and, for a batch input, what its lines ask (``batch_input``).
    detail: dict[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Watch:
    """An object that runs on upstream after the call that made it (a batch,
    a background response), watched until it ends: then charged, and what
    its admission reserved let go."""

    object_id: str
    kind: str  # batch, response
    client_id: str
    upstream: str
    reservation: Reservation
    created_at: datetime
    checks: int = 0  # times it was found still running: the next check waits longer
