"""The shared gate: budget copies in Redis, one hash per client.

Admission and settlement are each one Lua script, so one round trip answers
"may this client spend?" and a pause set by any process is seen by every
process on its next request. The scripts mirror :mod:`taximeter.store.budgets`
(the contract tests hold both gates to the same behaviour). Counters are
Redis integers; Lua compares them as doubles, exact below 2**53 nanos (about
9 million currency units per period).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from taximeter.pricing.money import to_nanos
from taximeter.store import budgets
from taximeter.store.base import Admission, StoreUnavailable
from taximeter.store.models import BudgetState

__all__ = ["RedisGate"]

# Hash fields: nb = no budget, p = paused, r = reason, tl/cl = token and cost
# limits (-1: not active), pal = pause at limit, t/c = tokens and cost used,
# nr = next reset (epoch ms, 0: never), v = version.
_ADMIT = """
local h = redis.call('HMGET', KEYS[1], 'nb', 'p', 'r', 'tl', 'cl', 'pal', 't', 'c', 'nr')
if not h[1] then return {'miss'} end
if h[1] == '1' then return {'ok'} end
local nr = tonumber(h[9])
if nr > 0 and tonumber(ARGV[1]) >= nr then return {'miss'} end
if h[2] == '1' then return {'refused', h[3]} end
if h[6] == '1' then
  local tl = tonumber(h[4])
  if tl >= 0 and tonumber(h[7]) >= tl then return {'refused', 'token_limit'} end
  local cl = tonumber(h[5])
  if cl >= 0 and tonumber(h[8]) >= cl then return {'refused', 'cost_limit'} end
end
return {'ok'}
"""

_SETTLE = """
local h = redis.call('HMGET', KEYS[1], 'nb', 'nr')
if (not h[1]) or h[1] == '1' then return 0 end
local nr = tonumber(h[2])
if nr > 0 and tonumber(ARGV[1]) >= nr then
  redis.call('DEL', KEYS[1])
  return 0
end
local t = redis.call('HINCRBY', KEYS[1], 't', ARGV[2])
local c = redis.call('HINCRBY', KEYS[1], 'c', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'v', 1)
local f = redis.call('HMGET', KEYS[1], 'p', 'pal', 'tl', 'cl')
if f[1] ~= '1' and f[2] == '1' then
  local tl = tonumber(f[3])
  local cl = tonumber(f[4])
  if tl >= 0 and t >= tl then
    redis.call('HSET', KEYS[1], 'p', '1', 'r', 'token_limit')
  elseif cl >= 0 and c >= cl then
    redis.call('HSET', KEYS[1], 'p', '1', 'r', 'cost_limit')
  end
end
return 1
"""


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def _fields(state: BudgetState | None) -> dict[str, Any]:
    if state is None:
        return {"nb": "1"}
    config = state.config
    token_limit = config.token_limit if config.mode in ("tokens", "both") else None
    cost_limit = config.cost_limit if config.mode in ("cost", "both") else None
    boundary = budgets.next_reset(state)
    return {
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


class RedisGate:
    """:class:`~taximeter.store.base.Gate` shared by every process through Redis."""

    def __init__(self, client: aioredis.Redis, *, prefix: str = "taximeter:", ttl_s: int = 3600) -> None:
        self._redis = client
        self._prefix = prefix
        self._ttl_s = ttl_s
        self._admit = client.register_script(_ADMIT)
        self._settle = client.register_script(_SETTLE)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "taximeter:") -> RedisGate:
        client = aioredis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        return cls(client, prefix=prefix)

    def _key(self, client_id: str) -> str:
        return f"{self._prefix}budget:{client_id}"

    async def admit(self, client_id: str, now: datetime) -> Admission:
        try:
            reply = await self._admit(keys=[self._key(client_id)], args=[_ms(now)])
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc
        outcome, *rest = (part.decode() if isinstance(part, bytes) else part for part in reply)
        return Admission(outcome, rest[0] if rest else None)

    async def load(self, client_id: str, state: BudgetState | None, now: datetime) -> None:
        key = self._key(client_id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.hset(key, mapping=_fields(state))
                pipe.expire(key, self._ttl_s)  # idle clients' copies go; they reload on demand
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc

    async def settle(self, client_id: str, tokens: int, cost_nanos: int, now: datetime) -> None:
        try:
            await self._settle(keys=[self._key(client_id)], args=[_ms(now), tokens, cost_nanos])
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc

    async def forget(self, client_id: str) -> None:
        try:
            await self._redis.delete(self._key(client_id))
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc

    async def close(self) -> None:
        await self._redis.aclose()
