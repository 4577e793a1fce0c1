"""The shared gate: budget copies and reservations in Redis.

Keys (under the configured prefix): ``budget:{client}``, a hash with the
budget's limits, counters and reserved totals; ``held:{client}``, a hash of
the client's reservations (``tokens:nanos:expires_ms:event-json``);
``expiry``, a sorted set of ``client/request`` by expiry time for the sweeper;
and ``unrecorded`` (a hash of ``client/request`` to event JSON) with
``unrecorded:due`` (by time): events counted here whose process has not yet
made them durable in the store, so a process killed in between loses nothing.

Admission, settlement, release and claiming are each one Lua script (in
``store/lua/``, read at import), so one
round trip answers "may this client spend?" and holds its reservation, and a
pause set by any process is seen by every process on its next request. The
scripts mirror :mod:`taximeter.pricing.budgets` (the contract tests hold both
gates to the same behaviour). Counters are Redis integers; Lua compares them
as doubles, exact below 2**53 nanos (about 9 million currency units a period).
"""

from __future__ import annotations

import asyncio
import pkgutil
from datetime import UTC, datetime
from typing import Any, cast, get_args

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from taximeter.pricing import budgets
from taximeter.pricing.models import BudgetState, Hold, Outcome, Reservation, UsageEvent
from taximeter.pricing.money import to_nanos
from taximeter.store.base import Admission, StoreUnavailable

__all__ = ["RedisGate"]


def _lua(name: str) -> str:
    """A script of store/lua/, shipped as package data beside this module.
    Read through the package's loader, as the import reads this module's own
    source: part of the import's I/O, done once (even when the first import
    happens on a running event loop, as the gate factory's does)."""
    data = pkgutil.get_data("taximeter.store", f"lua/{name}")
    if data is None:  # a loader that cannot read files: the install is broken
        raise ImportError(f"taximeter.store cannot read lua/{name}")
    return data.decode("utf-8")


# Read once, at import. release() is shared by the scripts that drop a reservation.
_RELEASE_FN = _lua("release_function.lua")
_ADMIT = _lua("admit.lua")
_SETTLE = _RELEASE_FN + _lua("settle.lua")
_RELEASE = _RELEASE_FN + _lua("release.lua")
_RESTORE = _lua("restore.lua")
_CLAIM = _RELEASE_FN + _lua("claim_expired.lua")
_LOAD = _lua("load.lua")
_CLAIM_UNRECORDED = _lua("claim_unrecorded.lua")

_HELD_TTL_S = 7 * 86400  # a reservations hash outlives any call; the sweeper empties it
_OUTCOMES = frozenset(get_args(Outcome))


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


# Fields of budget:{client}: nb = no budget, p = paused, r = reason, tl/cl =
# token and cost limits (-1: not active), pal = pause at limit, t/c = tokens
# and cost used, rt/rc = tokens and cost reserved, nr = next reset (epoch ms,
# 0: never), v = version.
def _fields(state: BudgetState | None) -> list[Any]:
    if state is None:
        return ["nb", "1"]
    config = state.config
    token_limit = config.token_limit if config.mode in ("tokens", "both") else None
    cost_limit = budgets.cost_limit(state)  # credits of this period included
    boundary = budgets.next_reset(state)
    values = {
        "nb": "0",
        "p": "1" if state.paused else "0",
        "r": state.pause_reason or "",
        "tl": -1 if token_limit is None else token_limit,
        "cl": -1 if cost_limit is None else to_nanos(cost_limit),
        "pal": "1" if config.pause_at_limit else "0",
        "t": state.tokens_used,
        "c": state.cost_used_nanos,
        "nr": 0 if boundary is None else _ms(boundary),
        "v": state.version,
    }
    return [item for pair in values.items() for item in pair]


_METRIC_CODES = {"tokens": "t", "cost": "c", "requests": "q", "concurrent": "n"}
_COUNTER_GRACE_MS = 3_600_000  # a window's counter outlives it by an hour: late settlements land in it


def _counter_ttl_ms(hold: Hold, now: datetime) -> int:
    """How long a limit counter is kept from ``now``: to its window's end and
    an hour more (0: kept, a window that never ends). Relative, as Redis
    counts it on its own clock."""
    if hold.window_end is None:
        return 0
    return max(_ms(hold.window_end) + _COUNTER_GRACE_MS - _ms(now), 1)


def _reservation(payload: bytes | str) -> Reservation:
    """A held reservation read back (its limit holds stay in Redis, which counts them)."""
    text = payload.decode() if isinstance(payload, bytes) else payload
    _tokens, nanos, expires_ms, rest = text.split(":", 3)
    event = rest.split("\n", 1)[1] if "\n" in rest else rest  # before limits: no holds, no newline
    return Reservation(
        event=UsageEvent.from_json(event),
        cost_nanos=int(nanos),
        expires_at=datetime.fromtimestamp(int(expires_ms) / 1000, UTC),
    )


class _Pipeliner:
    """Script calls made while Redis is busy go together: a call made when no
    other is on its way goes at once, in its own coroutine; calls made while
    some are on their way are queued, and those queued in one turn of the
    event loop are sent as one pipeline (one write, one read) instead of a
    round trip each. Each script still runs atomically on its own; only the
    trip is shared."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._queued: list[tuple[_Call, asyncio.Future[Any]]] = []
        self._on_the_way = 0

    async def call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        if not self._on_the_way and not self._queued:
            [reply] = await self._run([(script, keys, args)])
            if isinstance(reply, Exception):
                raise reply
            return reply
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self._queued:
            asyncio.get_running_loop().call_soon(self._send_queued)
        self._queued.append(((script, keys, args), future))
        return await future

    def _send_queued(self) -> None:
        batch, self._queued = self._queued, []
        task = asyncio.ensure_future(self._send(batch))
        _SENDING.add(task)
        task.add_done_callback(_SENDING.discard)

    async def _send(self, batch: list[tuple[_Call, asyncio.Future[Any]]]) -> None:
        replies = await self._run([call for call, _ in batch])
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue  # its caller was cancelled
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _run(self, calls: list[_Call]) -> list[Any]:
        """Each call's reply, or the StoreUnavailable it ended in."""
        self._on_the_way += 1
        try:
            replies = await self._execute(calls)
            missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if missing:  # Redis restarted or was flushed: load the scripts, run those again
                for script in {id(calls[i][0]): calls[i][0] for i in missing}.values():
                    await self._client.script_load(script.script)
                again = await self._execute([calls[i] for i in missing])
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
        except (RedisError, OSError) as exc:
            return [StoreUnavailable(f"Redis: {exc}")] * len(calls)
        finally:
            self._on_the_way -= 1
        return [StoreUnavailable(f"Redis: {r}") if isinstance(r, Exception) else r for r in replies]

    async def _execute(self, calls: list[_Call]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))


_Call = tuple[Any, list[str], list[Any]]  # a script, its keys, its arguments


_SENDING: set[asyncio.Task[None]] = set()  # pipelines in flight (the loop keeps weak references)


class RedisGate:
    """:class:`~taximeter.store.base.Gate` shared by every process through Redis."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "taximeter:",
        ttl_s: int = 3600,
        unrecorded_lease_s: float = 60.0,
    ) -> None:
        self._redis = client
        self._unrecorded_lease_ms = int(unrecorded_lease_s * 1000)
        self._prefix = prefix
        self._ttl_s = ttl_s
        self._admit = client.register_script(_ADMIT)
        self._settle = client.register_script(_SETTLE)
        self._release = client.register_script(_RELEASE)
        self._claim = client.register_script(_CLAIM)
        self._load = client.register_script(_LOAD)
        self._restore = client.register_script(_RESTORE)
        self._claim_unrecorded = client.register_script(_CLAIM_UNRECORDED)
        self._pipeliner = _Pipeliner(client)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "taximeter:") -> RedisGate:
        client = aioredis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        return cls(client, prefix=prefix)

    def _keys(self, client_id: str) -> list[str]:
        p = self._prefix
        return [f"{p}budget:{client_id}", f"{p}held:{client_id}", f"{p}expiry"]

    def _counter_key(self, hold: Hold) -> str:
        return f"{self._prefix}lim:{hold.key}"

    def _holds_text(self, holds: tuple[Hold, ...]) -> str:
        return " ".join(f"{self._counter_key(h)} {h.amount} {_METRIC_CODES[h.limit.metric]}" for h in holds)

    @staticmethod
    def _limit_args(holds: tuple[Hold, ...], now: datetime) -> list[Any]:
        """The limits as admit.lua reads them: one argument for them all."""
        if not holds:
            return []
        specs = []
        for hold in holds:
            limit = hold.limit
            rebuilt = 1 if limit.rebuilt_from_ledger else 0
            ttl = _counter_ttl_ms(hold, now)
            specs.append(
                f"{limit.limit} {hold.amount} {rebuilt} {_METRIC_CODES[limit.metric]} {ttl} {limit.name}"
            )
        return [" ".join(specs)]

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        return await self._pipeliner.call(script, keys, args)

    def _hold_args(self, reservation: Reservation, now: datetime) -> list[Any]:
        event = reservation.event
        return [
            _ms(now),
            event.request_id,
            reservation.tokens,
            reservation.cost_nanos,
            _ms(reservation.expires_at),
            self._holds_text(reservation.holds) + "\n" + event.to_json(),
            f"{event.client_id}/{event.request_id}",
            _HELD_TTL_S,
        ]

    async def admit(self, reservation: Reservation, now: datetime) -> Admission:
        holds = reservation.holds
        keys = self._keys(reservation.client_id) + [self._counter_key(h) for h in holds]
        reply = await self._run(
            self._admit, keys, self._hold_args(reservation, now) + self._limit_args(holds, now)
        )
        outcome, *rest = (part.decode() if isinstance(part, bytes) else part for part in reply)
        if outcome not in _OUTCOMES:
            raise StoreUnavailable(f"the admission script answered {outcome!r}")
        return Admission(cast(Outcome, outcome), rest[0] if rest else None)

    async def load(self, client_id: str, state: BudgetState | None, now: datetime) -> None:
        await self._run(self._load, self._keys(client_id)[:2], [self._ttl_s, *_fields(state)])

    async def settle(
        self,
        event: UsageEvent,
        cost_nanos: int,
        now: datetime,
        *,
        keep_until: datetime | None = None,
        budget: bool = True,
    ) -> dict[str, int]:
        member = f"{event.client_id}/{event.request_id}"
        args: list[Any] = [
            _ms(now),
            event.request_id,
            event.tokens,
            cost_nanos,
            member,
            "1" if budget else "0",
        ]
        if keep_until is not None:
            args += [event.to_json(), _ms(keep_until)]
        reply = await self._run(self._settle, [*self._keys(event.client_id), *self._unrecorded_keys()], args)
        counted = reply if isinstance(reply, list) else []
        skip = len(self._prefix) + len("lim:")  # answered by the hold's key, as the caller knows it
        return {
            (key.decode() if isinstance(key, bytes) else key)[skip:]: int(used)
            for key, used in zip(counted[::2], counted[1::2], strict=True)
        }

    def _unrecorded_keys(self) -> list[str]:
        return [f"{self._prefix}unrecorded", f"{self._prefix}unrecorded:due"]

    async def recorded(self, events: list[UsageEvent]) -> None:
        if not events:
            return
        members = [f"{e.client_id}/{e.request_id}" for e in events]
        table, due = self._unrecorded_keys()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hdel(table, *members)
                pipe.zrem(due, *members)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc

    async def claim_unrecorded(self, now: datetime, limit: int) -> list[UsageEvent]:
        table, due = self._unrecorded_keys()
        try:
            members = await self._redis.zrangebyscore(due, "-inf", _ms(now), start=0, num=limit)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc
        claimed = []
        for member in members:
            # Kept again for as long as it waited: the claimer may die too.
            lease_ms = _ms(now) + self._unrecorded_lease_ms
            payload = await self._run(
                self._claim_unrecorded, [table, due], [member.decode(), _ms(now), lease_ms]
            )
            if payload:
                claimed.append(
                    UsageEvent.from_json(payload.decode() if isinstance(payload, bytes) else payload)
                )
        return claimed

    async def extend(self, reservations: list[Reservation]) -> None:
        if not reservations:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for r in reservations:  # XX: a reservation already claimed is not held again
                    pipe.zadd(
                        f"{self._prefix}expiry", {f"{r.client_id}/{r.request_id}": _ms(r.expires_at)}, xx=True
                    )
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc

    async def restore(self, reservations: list[Reservation]) -> None:
        now = datetime.now(UTC)
        for reservation in reservations:
            await self._run(
                self._restore, self._keys(reservation.client_id), self._hold_args(reservation, now)
            )

    async def release(self, client_id: str, request_id: str) -> None:
        await self._run(self._release, self._keys(client_id), [request_id, f"{client_id}/{request_id}"])

    async def claim_expired(self, now: datetime, limit: int) -> list[Reservation]:
        try:
            members = await self._redis.zrangebyscore(
                f"{self._prefix}expiry", "-inf", _ms(now), start=0, num=limit
            )
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc
        claimed = []
        for member in members:
            client_id, request_id = member.decode().split("/", 1)
            payload = await self._run(self._claim, self._keys(client_id), [request_id, member.decode()])
            if payload:
                claimed.append(_reservation(payload))
        return claimed

    async def load_limits(self, counted: list[tuple[Hold, int]], now: datetime) -> None:
        """Counters counted again from the ledger, set where Redis has none."""
        if not counted:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for hold, used in counted:
                    key = self._counter_key(hold)
                    pipe.hsetnx(key, "u", str(used))
                    pipe.hsetnx(key, "r", "0")
                    if hold.window_end is not None:
                        pipe.pexpire(key, _counter_ttl_ms(hold, now))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc

    async def limit_counters(self, holds: list[Hold]) -> list[tuple[int, int] | None]:
        """``(used, reserved)`` of each hold's counter, None where Redis has none."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for hold in holds:
                    pipe.hmget(self._counter_key(hold), ["u", "r"])
                replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc
        return [None if u is None else (int(u), int(r or 0)) for u, r in replies]

    def needs_refresh(self, client_id: str, now: datetime) -> bool:
        return False  # every process writes its changes here: the copy is never behind

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc

    async def close(self) -> None:
        await self._redis.aclose()
