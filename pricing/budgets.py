"""Budget math, pure: periods, counters, pauses, levels and admission.

Every backend (both stores, both gates) applies these same functions, so the
ledger, the counters and the gate cannot disagree about what a call did. The
clock is always an argument; nothing here reads it.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from taximeter.pricing.models import BudgetAlert, BudgetConfig, BudgetState, Outcome
from taximeter.pricing.money import NANOS_PER_UNIT, from_nanos, money_text, parse_money, to_nanos
from taximeter.pricing.times import rfc3339

__all__ = [
    "MAX_COST_LIMIT",
    "MAX_TOKEN_LIMIT",
    "MODES",
    "PERIODS",
    "BudgetInputError",
    "Level",
    "admission",
    "alert_payload",
    "apply_usage",
    "config_from_json",
    "configure",
    "cost_limit",
    "give_credit",
    "level",
    "level_of",
    "percents",
    "period_bounds",
    "refusal",
    "reset",
    "roll",
    "transition",
]

MODES = ("tokens", "cost", "both")
# The largest limits every store holds: a signed 64-bit integer of tokens, and
# of nanos for money (SQLite keeps nanos; 9.2e18 nanos is 9.2e9 units).
MAX_TOKEN_LIMIT = 2**63 - 1
MAX_COST_LIMIT = Decimal(9 * 10**9)
MODE_ALIASES = {"brl": "cost"}
PERIODS = ("daily", "weekly", "monthly", "none")
# How full a budget is (dashboard colours, CLI bars, the budget status).
Level = Literal["ok", "warning", "critical", "exceeded"]
MANUAL = "manual"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class BudgetInputError(ValueError):
    """A budget field that cannot be accepted; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _midnight(day: date, tz: ZoneInfo) -> datetime:
    # Local midnight as a UTC instant; zoneinfo resolves DST gaps and folds.
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)


def period_bounds(period: str, timezone: str, now: datetime) -> tuple[datetime, datetime | None]:
    """Start of the period containing ``now`` and the next reset (None for ``none``).

    Days start at local midnight in ``timezone``, weeks on Monday, months on
    the 1st. For ``none`` the start is the epoch: a lifetime budget.
    """
    if period == "none":
        return _EPOCH, None
    tz = ZoneInfo(timezone)
    today = now.astimezone(tz).date()
    if period == "daily":
        start, end = today, today + timedelta(days=1)
    elif period == "weekly":
        start = today - timedelta(days=today.weekday())
        end = start + timedelta(days=7)
    elif period == "monthly":
        start = today.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"unknown period {period!r}")
    return _midnight(start, tz), _midnight(end, tz)


def next_reset(state: BudgetState) -> datetime | None:
    """When the period that ``state`` counts ends (None for lifetime budgets)."""
    return _period_end(state.config.period, state.config.timezone, state.period_start)


@functools.lru_cache(maxsize=4096)
def _period_end(period: str, timezone: str, start: datetime) -> datetime | None:
    # Asked of every budget read; clients share a few period starts.
    return None if period == "none" else period_bounds(period, timezone, start)[1]


def roll(state: BudgetState, now: datetime) -> BudgetState:
    """``state`` moved to the period containing ``now``: counters to zero and a
    limit pause cleared when a boundary has passed; a manual pause stays."""
    boundary = next_reset(state)
    if boundary is None or now < boundary:
        return state
    # Credits raise the limit of the period they were given in: a new one starts without.
    start = period_bounds(state.config.period, state.config.timezone, now)[0]
    return replace(reset(state, start), credit_nanos=0)


def reset(state: BudgetState, start: datetime) -> BudgetState:
    """Counters at zero from ``start`` on, and a limit pause lifted (a manual
    pause stays). A period rollover starts at the boundary; an operator's
    reset at the moment it is made, so the ledger since ``period_start``
    always equals the counters. The next reset stays at the period boundary."""
    manual = state.paused and state.pause_reason == MANUAL
    return replace(
        state,
        period_start=start,
        tokens_used=0,
        cost_used_nanos=0,
        paused=manual,
        pause_reason=MANUAL if manual else None,
        version=state.version + 1,
        alerts_fired=(),
    )


def configure(old: BudgetState | None, config: BudgetConfig, now: datetime) -> BudgetState:
    """A budget with new settings, as of ``now``. Counters and a manual pause
    carry over; a limit pause is lifted when the new limits are no longer
    reached. A new budget, or a new period or timezone, starts counting at the
    start of the period containing ``now``."""
    start = period_bounds(config.period, config.timezone, now)[0]
    if old is None:
        return BudgetState(config=config, period_start=start, version=1)
    same_period = (old.config.period, old.config.timezone) == (config.period, config.timezone)
    state = replace(
        old,
        config=config,
        period_start=old.period_start if same_period else start,
        version=old.version + 1,
    )
    if state.paused and state.pause_reason != MANUAL:
        unpaused = replace(state, paused=False, pause_reason=None)
        if refusal(unpaused) is None:
            state = unpaused
    return state


def cost_limit(state: BudgetState) -> Decimal | None:
    """The cost limit of this period: the budget's plus its credits (None when
    the mode has no cost limit)."""
    config = state.config
    if config.mode not in ("cost", "both") or config.cost_limit is None:
        return None
    return config.cost_limit + from_nanos(state.credit_nanos)


def give_credit(state: BudgetState, amount: Decimal) -> BudgetState:
    """``state`` with ``amount`` more to spend this period, and a limit pause
    lifted when no limit is reached any more (a manual pause stays)."""
    state = replace(state, credit_nanos=state.credit_nanos + to_nanos(amount), version=state.version + 1)
    if state.paused and state.pause_reason != MANUAL:
        unpaused = replace(state, paused=False, pause_reason=None)
        if refusal(unpaused) is None:
            state = unpaused
    return state


def _reached(state: BudgetState, tokens_used: int, cost_used_nanos: int) -> str | None:
    config = state.config
    tokens_active = config.mode in ("tokens", "both") and config.token_limit is not None
    if tokens_active and tokens_used >= config.token_limit:  # type: ignore[operator]
        return "token_limit"
    limit = cost_limit(state)
    if limit is not None and cost_used_nanos >= to_nanos(limit):
        return "cost_limit"
    return None


def apply_usage(state: BudgetState, tokens: int, cost_nanos: int) -> BudgetState:
    """``state`` after a call of ``tokens`` and ``cost_nanos``; pauses it when a
    limit is reached and the budget pauses at its limit."""
    tokens_used = state.tokens_used + tokens
    cost_used = state.cost_used_nanos + cost_nanos
    paused, reason = state.paused, state.pause_reason
    if not paused and state.config.pause_at_limit:
        reached = _reached(state, tokens_used, cost_used)
        if reached is not None:
            paused, reason = True, reached
    return replace(
        state,
        tokens_used=tokens_used,
        cost_used_nanos=cost_used,
        paused=paused,
        pause_reason=reason,
        version=state.version + 1,
    )


def refusal(state: BudgetState) -> str | None:
    """Why a new call must be refused (``manual``, ``token_limit``,
    ``cost_limit``), or None when it may proceed. Soft budgets only refuse
    when paused by hand."""
    if state.paused:
        return state.pause_reason or MANUAL
    if state.config.pause_at_limit:
        return _reached(state, state.tokens_used, state.cost_used_nanos)
    return None


def admission(state: BudgetState, reserved_tokens: int, reserved_nanos: int) -> tuple[Outcome, str | None]:
    """Whether a new call may start while others hold ``reserved_*``.

    ``("ok", None)``; ``("refused", reason)`` when paused or a limit is reached
    by what was already spent; ``("busy", reason)`` when only the reservations
    of calls in flight fill the limit (worth retrying once they settle).
    """
    reason = refusal(state)
    if reason is not None:
        return "refused", reason
    if not state.config.pause_at_limit:
        return "ok", None
    busy = _reached(state, state.tokens_used + reserved_tokens, state.cost_used_nanos + reserved_nanos)
    return ("busy", busy) if busy is not None else ("ok", None)


def _ratios(state: BudgetState) -> dict[str, Decimal]:
    config = state.config
    ratios = {}
    if config.mode in ("tokens", "both") and config.token_limit:
        ratios["tokens"] = Decimal(state.tokens_used) / config.token_limit
    limit = cost_limit(state)
    if limit:
        ratios["cost"] = Decimal(state.cost_used_nanos) / (limit * NANOS_PER_UNIT)
    return ratios


def transition(old: BudgetState | None, new: BudgetState) -> tuple[BudgetState, list[BudgetAlert]]:
    """The alerts a change from ``old`` to ``new`` raises, and ``new`` with
    the thresholds it fired recorded. Each threshold fires once per period
    per metric; a new period (a rollover or an operator's reset) clears them."""
    alerts: list[BudgetAlert] = []
    client = new.client_id
    if (
        old is not None
        and new.period_start != old.period_start
        and not (new.tokens_used or new.cost_used_nanos)
    ):
        alerts.append(BudgetAlert("reset", client))
    if new.paused and (old is None or not old.paused):
        alerts.append(BudgetAlert("paused", client, pause_reason=new.pause_reason))
    fired = set(new.alerts_fired)
    for metric, ratio in _ratios(new).items():
        for threshold in new.config.alert_thresholds:
            key = f"{metric}:{threshold}"
            if ratio >= threshold and key not in fired:
                fired.add(key)
                alerts.append(BudgetAlert("threshold", client, metric=metric, threshold=threshold))
    return replace(new, alerts_fired=tuple(sorted(fired))), alerts


def alert_payload(alert: BudgetAlert, state: BudgetState, alert_id: str, now: datetime) -> dict[str, Any]:
    """The JSON a webhook receives for ``alert`` (money as decimal strings)."""
    config = state.config
    tokens_pct, cost_pct = percents(state)
    body: dict[str, Any] = {
        "id": alert_id,
        "type": f"budget.{alert.kind}",
        "client_id": alert.client_id,
        "created_at": rfc3339(now),
        "period_start": rfc3339(state.period_start),
        "level": level(state),
        "paused": state.paused,
        "pause_reason": state.pause_reason,
        "tokens_used": state.tokens_used,
        "token_limit": config.token_limit,
        "tokens_percent": tokens_pct,
        "cost_used": money_text(from_nanos(state.cost_used_nanos)),
        "cost_limit": None if (limit := cost_limit(state)) is None else money_text(limit),
        "cost_percent": cost_pct,
        "currency": config.currency,
    }
    if alert.kind == "threshold":
        body["metric"] = alert.metric
        body["threshold"] = float(alert.threshold or 0)
    return body


def percents(state: BudgetState, *, places: int | None = 2) -> tuple[float | None, float | None]:
    """Percent used of the token and cost limits (None where a limit does not
    apply), rounded to ``places`` decimals (None: unrounded, to compare with a level)."""
    config = state.config
    tokens_pct = cost_pct = None
    if config.mode in ("tokens", "both") and config.token_limit:
        tokens_pct = 100.0 * state.tokens_used / config.token_limit
    limit = cost_limit(state)
    if limit:
        cost_pct = float(Decimal(100 * state.cost_used_nanos) / (limit * NANOS_PER_UNIT))
    if places is None:
        return tokens_pct, cost_pct
    return (
        None if tokens_pct is None else round(tokens_pct, places),
        None if cost_pct is None else round(cost_pct, places),
    )


def urgency(state: BudgetState) -> float:
    """How close a budget is to a limit: the highest percent used of its
    limits, at least 100 while its calls are refused (what an overview
    orders clients by, closest first)."""
    highest = max((p for p in percents(state, places=None) if p is not None), default=0.0)
    return max(highest, 100.0) if refusal(state) is not None else highest


def level(state: BudgetState) -> Level:
    """The level of the highest of the active metrics (79.999% is still ``ok``)."""
    return level_of(max((p for p in percents(state, places=None) if p is not None), default=0.0))


def level_of(percent: float) -> Level:
    """``ok`` < 80% ≤ ``warning`` < 90% ≤ ``critical`` < 100% ≤ ``exceeded``."""
    if percent >= 100:
        return "exceeded"
    if percent >= 90:
        return "critical"
    if percent >= 80:
        return "warning"
    return "ok"


def config_from_json(client_id: str, data: Any, *, timezone: str, currency: str) -> BudgetConfig:
    """A BudgetConfig from a PUT body (or CLI flags), validated field by field.

    Raises BudgetInputError naming the first bad field.
    """
    if not isinstance(data, dict):
        raise BudgetInputError("body", "must be a JSON object")
    known = {"mode", "token_limit", "cost_limit", "period", "timezone", "pause_at_limit", "alert_thresholds"}
    for key in data:
        if key not in known:
            raise BudgetInputError(str(key), "unknown field")
    mode = data.get("mode")
    if isinstance(mode, str):  # a list or an object is no mode (and no key of MODE_ALIASES)
        mode = MODE_ALIASES.get(mode, mode)
    if mode not in MODES:
        raise BudgetInputError(
            "mode", f"must be one of tokens, cost (or brl), both; got {data.get('mode')!r}"
        )
    token_limit = _token_limit(data.get("token_limit"), required=mode in ("tokens", "both"))
    cost_limit = _cost_limit(data.get("cost_limit"), required=mode in ("cost", "both"))
    period = data.get("period", "monthly")
    if period not in PERIODS:
        raise BudgetInputError("period", f"must be one of {', '.join(PERIODS)}")
    tz = data.get("timezone")
    if tz is None or tz == "":  # left out or empty: the server's (not any other falsy value)
        tz = timezone
    _check_timezone(tz)
    pause = data.get("pause_at_limit", True)
    if not isinstance(pause, bool):
        raise BudgetInputError("pause_at_limit", "must be true or false")
    return BudgetConfig(
        client_id=client_id,
        mode=mode,
        period=period,
        timezone=tz,
        currency=currency,
        token_limit=token_limit if mode != "cost" else None,
        cost_limit=cost_limit if mode != "tokens" else None,
        pause_at_limit=pause,
        alert_thresholds=_thresholds(data.get("alert_thresholds")),
    )


def _token_limit(value: Any, *, required: bool) -> int | None:
    if value is None:
        if required:
            raise BudgetInputError("token_limit", "required for this mode")
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 2.0 is an integer in JSON (and in JSON Schema)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BudgetInputError("token_limit", "must be a positive integer")
    if value > MAX_TOKEN_LIMIT:
        raise BudgetInputError("token_limit", f"must be at most {MAX_TOKEN_LIMIT}")
    return value


def _cost_limit(value: Any, *, required: bool) -> Decimal | None:
    if value is None:
        if required:
            raise BudgetInputError("cost_limit", "required for this mode")
        return None
    try:
        limit = parse_money(value)
    except ValueError as exc:
        raise BudgetInputError("cost_limit", str(exc)) from exc
    if limit <= 0:
        raise BudgetInputError("cost_limit", "must be greater than zero")
    if limit > MAX_COST_LIMIT:
        raise BudgetInputError("cost_limit", f"must be at most {MAX_COST_LIMIT}")
    return limit


def _check_timezone(tz: Any) -> None:
    if not isinstance(tz, str):
        raise BudgetInputError("timezone", "must be an IANA timezone name")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise BudgetInputError("timezone", f"unknown timezone {tz!r}") from exc


def _thresholds(value: Any) -> tuple[Decimal, ...]:
    if value is None:
        return (Decimal("0.8"), Decimal("0.9"), Decimal("1.0"))
    if not isinstance(value, list) or not value:
        raise BudgetInputError("alert_thresholds", "must be a non-empty list of fractions")
    out = []
    for item in value:
        try:
            threshold = parse_money(item)
        except ValueError as exc:
            raise BudgetInputError("alert_thresholds", str(exc)) from exc
        if not 0 < threshold <= 1:
            raise BudgetInputError("alert_thresholds", "each must be in (0, 1]")
        out.append(threshold)
    return tuple(sorted(set(out)))
