"""The shared gate: budget copies and reservations in Redis.

Keys (named in :mod:`taximeter.store.redis_keys`, for one server or a
cluster): ``budget:{client}``, a hash with the budget's limits, counters and
reserved totals; ``held:{client}``, a hash of the client's reservations
(``tokens:nanos:expires_ms:holds\nevent-json``); ``lim:{client}:...``, one
counter per limit window; ``expiry``, a sorted set of ``client/request`` by
expiry time for the sweeper; and ``unrecorded`` (a hash of ``client/request``
to event JSON) with ``unrecorded:due`` (by time): events counted here whose
process has not yet made them durable in the store, so a process killed in
between loses nothing. On a cluster the last three are kept per hash slot.

Admission, settlement, release and claiming are each one Lua script (in
``store/lua/``, read at import) over the keys of one client's slot, so one
round trip answers "may this client spend?" and holds its reservation, and a
pause set by any process is seen by every process on its next request. The
scripts mirror :mod:`taximeter.pricing.budgets` (the contract tests hold both
gates to the same behaviour). Counters are Redis integers; Lua compares them
as doubles, exact below 2**53 nanos (about 9 million currency units a period).
"""

from __future__ import annotations

import asyncio
import hashlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast, get_args

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import AskError, ClusterCrossSlotError, MovedError, NoScriptError, RedisError

from taximeter.pricing import budgets
from taximeter.pricing.models import BudgetState, Hold, Outcome, Reservation, UsageEvent
from taximeter.pricing.money import to_nanos
from taximeter.store.base import Admission, StoreUnavailable
from taximeter.store.redis_keys import KeyLayout

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


@dataclass(frozen=True, slots=True)
class _Script:
    """A script's source and the SHA-1 Redis knows it by (run with EVALSHA;
    loaded again on every node that answers it does not know it)."""

    script: str
    sha: str

    @classmethod
    def of(cls, source: str) -> _Script:
        return cls(source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


# Read once, at import. release() is shared by the scripts that drop a reservation.
_RELEASE_FN = _lua("release_function.lua")
_ADMIT = _Script.of(_lua("admit.lua"))
_SETTLE = _Script.of(_RELEASE_FN + _lua("settle.lua"))
_RELEASE = _Script.of(_RELEASE_FN + _lua("release.lua"))
_RESTORE = _Script.of(_lua("restore.lua"))
_CLAIM = _Script.of(_RELEASE_FN + _lua("claim_expired.lua"))
_LOAD = _Script.of(_lua("load.lua"))
_CLAIM_UNRECORDED = _Script.of(_lua("claim_unrecorded.lua"))

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

    def __init__(self, client: aioredis.Redis | RedisCluster) -> None:
        self._client = client
        self._queued: list[tuple[_Call, asyncio.Future[Any]]] = []
        self._on_the_way = 0

    async def call(self, script: _Script, keys: list[str], args: list[Any]) -> Any:
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
                for script in {calls[i][0] for i in missing}:
                    await self._client.script_load(script.script)
                again = await self._execute([calls[i] for i in missing])
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
        except (RedisError, OSError) as exc:
            return [unavailable(exc)] * len(calls)
        finally:
            self._on_the_way -= 1
        return [unavailable(r) if isinstance(r, Exception) else r for r in replies]

    async def _execute(self, calls: list[_Call]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for script, keys, args in calls:
            # As a plain command: a cluster's pipeline refuses evalsha() by
            # name, but routes EVALSHA by its keys (one slot per script here).
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))


_Call = tuple[_Script, list[str], list[Any]]  # a script, its keys, its arguments


def unavailable(exc: BaseException) -> StoreUnavailable:
    """What a Redis failure means to the gate's callers; a cluster's node
    talked to as one server (it redirects, or refuses keys of several slots)
    says what to set."""
    if isinstance(exc, (MovedError, AskError, ClusterCrossSlotError)):
        return StoreUnavailable("Redis is a cluster: set redis_cluster = true")
    return StoreUnavailable(f"Redis: {exc}")


_SENDING: set[asyncio.Task[None]] = set()  # pipelines in flight (the loop keeps weak references)


class RedisGate:
    """:class:`~taximeter.store.base.Gate` shared by every process through
    Redis: one server, or a Redis Cluster (``cluster=True``)."""

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        *,
        prefix: str = "taximeter:",
        ttl_s: int = 3600,
        unrecorded_lease_s: float = 60.0,
    ) -> None:
        self._redis = client
        self._unrecorded_lease_ms = int(unrecorded_lease_s * 1000)
        self._keys = KeyLayout(prefix, cluster=isinstance(client, RedisCluster))
        self._keys.prepare()
        self._shards_held: set[str] = set()  # listed under `slots` by this process
        self._ttl_s = ttl_s
        self._pipeliner = _Pipeliner(client)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "taximeter:", cluster: bool = False) -> RedisGate:
        """A gate on the server at ``url``, or on the cluster that node is part of."""
        timeouts: dict[str, Any] = {"socket_timeout": 2, "socket_connect_timeout": 2}
        if cluster:
            return cls(RedisCluster.from_url(url, **timeouts), prefix=prefix)
        return cls(aioredis.Redis.from_url(url, **timeouts), prefix=prefix)

    def _counter_key(self, hold: Hold) -> str:
        return self._keys.counter(hold.key)

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

    async def _run(self, script: _Script, keys: list[str], args: list[Any]) -> Any:
        return await self._pipeliner.call(script, keys, args)

    async def _commands(self, add: Callable[[Any], object]) -> list[Any]:
        """Plain commands, pipelined: ``add`` puts them on the pipeline."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                add(pipe)
                return list(await pipe.execute())
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from exc

    async def _listed(self, client_id: str) -> None:
        """On a cluster, the client's slot listed for the sweeper before
        anything is held in it (once per process; the sweeper lists again
        what this process holds, in case Redis lost the list)."""
        shard = self._keys.shard(client_id)
        if shard and shard not in self._shards_held:
            await self._commands(lambda pipe: pipe.sadd(self._keys.slots, shard))
            self._shards_held.add(shard)

    async def _shards(self) -> list[str]:
        """The sweeper's indexes to visit: one on a server, each slot in use on a cluster."""
        if not self._keys.cluster:
            return [""]
        held = list(self._shards_held)

        def add(pipe: Any) -> None:
            if held:
                pipe.sadd(self._keys.slots, *held)
            pipe.smembers(self._keys.slots)

        *_, listed = await self._commands(add)
        return sorted(s.decode() if isinstance(s, bytes) else s for s in listed)

    async def _due(self, index: Callable[[str], str], now: datetime, limit: int) -> list[str]:
        """Up to ``limit`` members due by ``now`` in the sweeper's indexes."""
        shards = await self._shards()
        replies = await self._commands(
            lambda pipe: [pipe.zrangebyscore(index(s), "-inf", _ms(now), start=0, num=limit) for s in shards]
        )
        members = [m.decode() if isinstance(m, bytes) else m for reply in replies for m in reply]
        return members[:limit]

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
        await self._listed(reservation.client_id)
        keys = self._keys.client_keys(reservation.client_id) + [self._counter_key(h) for h in holds]
        reply = await self._run(
            _ADMIT, keys, self._hold_args(reservation, now) + self._limit_args(holds, now)
        )
        outcome, *rest = (part.decode() if isinstance(part, bytes) else part for part in reply)
        if outcome not in _OUTCOMES:
            raise StoreUnavailable(f"the admission script answered {outcome!r}")
        return Admission(cast(Outcome, outcome), rest[0] if rest else None)

    async def load(self, client_id: str, state: BudgetState | None, now: datetime) -> None:
        keys = [self._keys.budget(client_id), self._keys.held(client_id)]
        await self._run(_LOAD, keys, [self._ttl_s, *_fields(state)])

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
            await self._listed(event.client_id)
            args += [event.to_json(), _ms(keep_until)]
        reply = await self._run(_SETTLE, self._keys.settle_keys(event.client_id), args)
        counted = reply if isinstance(reply, list) else []
        skip = len(self._keys.counter(""))  # answered by the hold's key, as the caller knows it
        return {
            (key.decode() if isinstance(key, bytes) else key)[skip:]: int(used)
            for key, used in zip(counted[::2], counted[1::2], strict=True)
        }

    async def recorded(self, events: list[UsageEvent]) -> None:
        by_shard: dict[str, list[str]] = {}
        for e in events:
            by_shard.setdefault(self._keys.shard(e.client_id), []).append(f"{e.client_id}/{e.request_id}")
        if not by_shard:
            return

        def add(pipe: Any) -> None:
            for shard, members in by_shard.items():
                pipe.hdel(self._keys.unrecorded(shard), *members)
                pipe.zrem(self._keys.unrecorded_due(shard), *members)

        await self._commands(add)

    async def claim_unrecorded(self, now: datetime, limit: int) -> list[UsageEvent]:
        claimed = []
        for member in await self._due(self._keys.unrecorded_due, now, limit):
            shard = self._keys.shard(member.split("/", 1)[0])
            keys = [self._keys.unrecorded(shard), self._keys.unrecorded_due(shard)]
            # Kept again for as long as it waited: the claimer may die too.
            lease_ms = _ms(now) + self._unrecorded_lease_ms
            payload = await self._run(_CLAIM_UNRECORDED, keys, [member, _ms(now), lease_ms])
            if payload:
                claimed.append(
                    UsageEvent.from_json(payload.decode() if isinstance(payload, bytes) else payload)
                )
        return claimed

    async def extend(self, reservations: list[Reservation]) -> None:
        def add(pipe: Any) -> None:
            for r in reservations:  # XX: a reservation already claimed is not held again
                index = self._keys.expiry(self._keys.shard(r.client_id))
                pipe.zadd(index, {f"{r.client_id}/{r.request_id}": _ms(r.expires_at)}, xx=True)

        if reservations:
            await self._commands(add)

    async def restore(self, reservations: list[Reservation]) -> None:
        now = datetime.now(UTC)
        for reservation in reservations:
            await self._listed(reservation.client_id)
            keys = self._keys.client_keys(reservation.client_id)
            await self._run(_RESTORE, keys, self._hold_args(reservation, now))

    async def release(self, client_id: str, request_id: str) -> None:
        keys = self._keys.client_keys(client_id)
        await self._run(_RELEASE, keys, [request_id, f"{client_id}/{request_id}"])

    async def claim_expired(self, now: datetime, limit: int) -> list[Reservation]:
        claimed = []
        for member in await self._due(self._keys.expiry, now, limit):
            client_id, request_id = member.split("/", 1)
            payload = await self._run(_CLAIM, self._keys.client_keys(client_id), [request_id, member])
            if payload:
                claimed.append(_reservation(payload))
        return claimed

    async def load_limits(self, counted: list[tuple[Hold, int]], now: datetime) -> None:
        """Counters counted again from the ledger, set where Redis has none."""

        def add(pipe: Any) -> None:
            for hold, used in counted:
                key = self._counter_key(hold)
                pipe.hsetnx(key, "u", str(used))
                pipe.hsetnx(key, "r", "0")
                if hold.window_end is not None:
                    pipe.pexpire(key, _counter_ttl_ms(hold, now))

        if counted:
            await self._commands(add)

    async def limit_counters(self, holds: list[Hold]) -> list[tuple[int, int] | None]:
        """``(used, reserved)`` of each hold's counter, None where Redis has none."""
        replies = await self._commands(
            lambda pipe: [pipe.hmget(self._counter_key(hold), ["u", "r"]) for hold in holds]
        )
        return [None if u is None else (int(u), int(r or 0)) for u, r in replies]

    def forget_copies(self) -> None:
        return None  # its copies are shared: every process writes its changes to them

    def needs_refresh(self, client_id: str, now: datetime) -> bool:
        return False  # every process writes its changes here: the copy is never behind

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from exc

    async def close(self) -> None:
        await self._redis.aclose()
