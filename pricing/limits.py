"""Limits beside the budget (spec section 6b), pure: what a limit is, which
calls it applies to, its windows, and what a call holds against it.

Every gate counts a limit the same way: per window (a minute or an hour
aligned to the clock, a day, week or month in the budget's timezone, or no
window), per client or per end user, only for the models its globs match. An
admitted call holds an amount on each limit that applies (its estimate, or 1
for requests and concurrency); its settlement swaps that for what it used.
Admission refuses at a limit already reached by what was used (``refused``),
or filled by the calls in flight (``busy``), as the budget does.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from taximeter.pricing.budgets import MAX_COST_LIMIT, MAX_TOKEN_LIMIT, BudgetInputError, period_bounds
from taximeter.pricing.forecast import project
from taximeter.pricing.models import RATE_WINDOWS, Hold, Limit
from taximeter.pricing.money import from_nanos, money_text, to_nanos
from taximeter.pricing.terms import exact_amount, model_globs
from taximeter.pricing.times import rfc3339

__all__ = [
    "ALERT_THRESHOLDS",
    "METRICS",
    "RATE_WINDOWS",
    "WINDOWS",
    "DuplicateLimit",
    "Hold",
    "Limit",
    "admission",
    "alert_id",
    "alert_payload",
    "crossed",
    "end_user_tag",
    "holds_for",
    "late_holds",
    "limit_json",
    "limits_from_json",
    "limits_json",
    "long_running_holds",
    "retry_after_s",
    "status_holds",
    "status_json",
    "window_bounds",
]

METRICS = ("tokens", "cost", "requests", "concurrent")
WINDOWS = ("minute", "hour", "daily", "weekly", "monthly", "none")
MAX_LIMITS = 50
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FIELDS = frozenset({"name", "metric", "limit", "window", "per", "models"})


def _amount(metric: str, tokens: int, cost_nanos: int) -> int:
    if metric == "tokens":
        return tokens
    if metric == "cost":
        return cost_nanos
    if metric == "requests":
        return 1
    return 0  # concurrent: only calls in flight count


def window_bounds(window: str, timezone: str, now: datetime) -> tuple[datetime, datetime | None]:
    """Start and end of the window containing ``now``: minutes and hours
    aligned to the clock (UTC), days, weeks and months in ``timezone``.
    On every admission's path: the last answer per window and timezone is
    kept while ``now`` is inside it."""
    last = _LAST_WINDOWS.get((window, timezone))
    if last is not None and last[0] <= now and (last[1] is None or now < last[1]):
        return last
    if window in ("minute", "hour"):
        size = timedelta(minutes=1) if window == "minute" else timedelta(hours=1)
        start = _EPOCH + ((now - _EPOCH) // size) * size
        bounds: tuple[datetime, datetime | None] = (start, start + size)
    elif window == "none":
        bounds = (_EPOCH, None)
    else:
        bounds = period_bounds(window, timezone, now)
    if len(_LAST_WINDOWS) > 10_000:  # timezones are few; bounded all the same
        _LAST_WINDOWS.clear()
    _LAST_WINDOWS[(window, timezone)] = bounds
    return bounds


_LAST_WINDOWS: dict[tuple[str, str], tuple[datetime, datetime | None]] = {}


def retry_after_s(hold: Hold, now: datetime) -> int:
    """Seconds until ``hold``'s window resets (1 for limits without one: a
    concurrency slot frees when a call ends)."""
    if hold.window_end is None:
        return 1
    return max(1, int((hold.window_end - now).total_seconds() + 0.999))


def end_user_tag(end_user: str | None) -> str:
    """A short, key-safe name of an end user (calls without one share "")."""
    if not end_user:
        return "-"
    return hashlib.sha256(end_user.encode()).hexdigest()[:20]


def holds_for(
    limits: tuple[Limit, ...],
    *,
    client_id: str,
    model: str,
    end_user: str | None,
    tokens: int,
    cost_nanos: int,
    timezone: str,
    now: datetime,
) -> tuple[Hold, ...]:
    """What a call estimated at ``tokens`` and ``cost_nanos`` holds on each
    limit that applies to it."""
    return tuple(
        _hold(limit, client_id, end_user, tokens, cost_nanos, timezone, now)
        for limit in limits
        if limit.covers(model)
    )


def long_running_holds(
    limits: tuple[Limit, ...],
    *,
    client_id: str,
    models: dict[str, tuple[int, int, int]],
    timezone: str,
    now: datetime,
) -> tuple[Hold, ...]:
    """What a call that runs on upstream for hours (a batch) holds: on each
    spend cap of a day or longer that covers any of its ``models`` (each
    ``(requests, tokens, cost_nanos)``), the sum over those models. Rate
    windows and calls in flight are not held for hours: its lines are
    charged as they come back, when those have long moved on."""
    holds = []
    for limit in limits:
        covered = [counts for model, counts in models.items() if limit.covers(model)]
        if not covered or not limit.rebuilt_from_ledger:
            continue
        requests, tokens, cost_nanos = (sum(c[i] for c in covered) for i in range(3))
        hold = _hold(limit, client_id, None, tokens, cost_nanos, timezone, now)
        holds.append(replace(hold, amount=requests) if limit.metric == "requests" else hold)
    return tuple(holds)


def late_holds(
    limits: tuple[Limit, ...], *, client_id: str, model: str, timezone: str, now: datetime
) -> tuple[Hold, ...]:
    """The counters a call charged after its reservation is gone (a batch's
    line) counts on: each spend cap of a day or longer covering ``model``,
    in the window of ``now``, holding nothing."""
    return tuple(
        replace(_hold(limit, client_id, None, 0, 0, timezone, now), amount=0)
        for limit in limits
        if limit.covers(model) and limit.rebuilt_from_ledger
    )


def status_holds(
    limits: tuple[Limit, ...], *, client_id: str, end_user: str | None, timezone: str, now: datetime
) -> tuple[Hold, ...]:
    """The counter of each limit in the window containing ``now`` (of
    ``end_user`` where a limit is per end user), whatever models it covers."""
    return tuple(_hold(limit, client_id, end_user, 0, 0, timezone, now) for limit in limits)


def _hold(
    limit: Limit,
    client_id: str,
    end_user: str | None,
    tokens: int,
    cost_nanos: int,
    timezone: str,
    now: datetime,
) -> Hold:
    start, end = window_bounds(limit.window, timezone, now)
    user = (end_user or "") if limit.per == "end_user" else ""
    tag = end_user_tag(user) if limit.per == "end_user" else "*"
    key = f"{{{client_id}}}:{limit.name}:{limit.shape}:{tag}:{int(start.timestamp())}"
    amount = 1 if limit.metric in ("requests", "concurrent") else _amount(limit.metric, tokens, cost_nanos)
    return Hold(key, limit, amount, start, end, user)


def status_json(
    hold: Hold, used: int, reserved: int, declared: Limit, now: datetime | None = None
) -> dict[str, Any]:
    """A limit as ``GET /admin/clients/{id}/limits`` and ``/budget/status`` show
    it; a spend cap's ``forecast`` (as of ``now``) where its window says one."""
    limit = hold.limit
    remaining = max(limit.limit - used - reserved, 0)
    money = limit.metric == "cost"
    course = None
    if now is not None and hold.window_end is not None and limit.rebuilt_from_ledger:
        course = project(Decimal(used), Decimal(limit.limit), hold.window_start, hold.window_end, now)
    forecast = None
    if course is not None:
        at_end = int(course.at_end)
        forecast = {
            "at_window_end": _money(at_end) if money else at_end,
            "runs_out_at": rfc3339(course.runs_out_at),
        }
    return {
        **limit_json(declared),
        "used": _money(used) if money else used,
        "reserved": _money(reserved) if money else reserved,
        "remaining": _money(remaining) if money else remaining,
        "resets_at": rfc3339(hold.window_end),
        "forecast": forecast,
    }


ALERT_THRESHOLDS = (Decimal("0.8"), Decimal("0.9"), Decimal("1"))


def crossed(hold: Hold, used: int, added: int) -> list[Decimal]:
    """The alert thresholds a spend cap of a day or longer, per client,
    crossed when ``added`` brought it to ``used``."""
    limit = hold.limit
    if limit.per != "client" or limit.rate or limit.metric == "concurrent":
        return []
    return [t for t in ALERT_THRESHOLDS if used - added < t * limit.limit <= used]


def alert_payload(
    client_id: str, hold: Hold, threshold: Decimal, used: int, alert_id: str, now: datetime
) -> dict[str, Any]:
    """The webhook body of a limit's threshold crossed (``limit.threshold``)."""
    limit = hold.limit
    money = limit.metric == "cost"
    return {
        "id": alert_id,
        "type": "limit.threshold",
        "client_id": client_id,
        "limit": limit.name,
        "metric": limit.metric,
        "window": limit.window,
        "threshold": float(threshold),
        "used": _money(used) if money else used,
        "limit_value": _money(limit.limit) if money else limit.limit,
        "window_start": rfc3339(hold.window_start),
        "resets_at": rfc3339(hold.window_end),
        "created_at": rfc3339(now),
    }


def alert_id(client_id: str, hold: Hold, threshold: Decimal) -> str:
    """One id per client, limit, window and threshold: an alert fires once however many processes see it."""
    return f"lim_{client_id}_{hold.limit.name}_{int(hold.window_start.timestamp())}_{threshold.normalize()}"


def _money(nanos: int) -> str:
    return money_text(from_nanos(nanos))


def admission(used: int, reserved: int, limit: Limit) -> Literal["refused", "busy"] | None:
    """``refused`` when what was used reaches the limit, ``busy`` when the
    calls in flight fill it, None when a call may start. Requests and
    concurrency count the call itself: the limit-th call is the last one."""
    if limit.metric == "concurrent":
        return "refused" if reserved >= limit.limit else None
    if limit.metric == "requests":
        return "refused" if used + reserved >= limit.limit else None
    if used >= limit.limit:
        return "refused"
    return "busy" if used + reserved >= limit.limit else None


# -- input -----------------------------------------------------------------------


def limits_from_json(data: Any) -> tuple[Limit, ...]:
    """The set of ``PUT /admin/clients/{id}/limits`` (``{"limits": [...]}``),
    validated field by field; BudgetInputError names ``limits[i].field``."""
    if not isinstance(data, dict) or set(data) != {"limits"} or not isinstance(data["limits"], list):
        raise BudgetInputError("limits", 'the body must be {"limits": [...]}')
    items = data["limits"]
    if len(items) > MAX_LIMITS:
        raise BudgetInputError("limits", f"at most {MAX_LIMITS} limits")
    limits = tuple(_limit(item, f"limits[{i}]") for i, item in enumerate(items))
    names = [limit.name for limit in limits]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise DuplicateLimit(f"limits[{i}].name", f"{name!r} names two limits")
    return limits


class DuplicateLimit(BudgetInputError):
    """Two limits of one set share a name (each is valid alone)."""


def _limit(item: Any, where: str) -> Limit:
    if not isinstance(item, dict):
        raise BudgetInputError(where, "must be an object")
    for key in item:
        if key not in _FIELDS:
            raise BudgetInputError(f"{where}.{key}", "unknown field")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise BudgetInputError(f"{where}.name", "must be a slug: lowercase letters, digits, - or _")
    metric = item.get("metric")
    if metric not in METRICS:
        raise BudgetInputError(f"{where}.metric", f"must be one of {', '.join(METRICS)}")
    window = item.get("window", "none")
    if metric == "concurrent":
        if window != "none":
            raise BudgetInputError(f"{where}.window", "a concurrent limit has no window")
    elif window not in WINDOWS:
        raise BudgetInputError(f"{where}.window", f"must be one of {', '.join(WINDOWS)}")
    per = item.get("per", "client")
    if per not in ("client", "end_user"):
        raise BudgetInputError(f"{where}.per", "must be client or end_user")
    return Limit(
        name=name,
        metric=metric,
        limit=_amount_of(metric, item.get("limit"), f"{where}.limit"),
        window=window,
        per=per,
        models=model_globs(item.get("models"), f"{where}.models"),
    )


def _amount_of(metric: str, value: Any, field: str) -> int:
    if metric == "cost":
        return to_nanos(exact_amount(value, field, at_most=MAX_COST_LIMIT))
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_TOKEN_LIMIT:
        raise BudgetInputError(field, "must be a positive integer")
    return value


def limit_json(limit: Limit) -> dict[str, Any]:
    """A limit as declared (cost in the client's currency, as a decimal string)."""
    amount: int | str = limit.limit
    if limit.metric == "cost":
        amount = money_text(from_nanos(limit.limit))
    return {
        "name": limit.name,
        "metric": limit.metric,
        "limit": amount,
        "window": limit.window,
        "per": limit.per,
        "models": None if limit.models is None else list(limit.models),
    }


def limits_json(limits: tuple[Limit, ...]) -> list[dict[str, Any]]:
    return [limit_json(limit) for limit in limits]
