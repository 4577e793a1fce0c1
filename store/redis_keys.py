"""Where the Redis gate keeps things: the name of every key, for one Redis
server or a Redis Cluster.

A Lua script may only touch keys of one hash slot in a cluster. So on a
cluster every key a script touches carries its client's hash tag
(``budget:{acme}``; the limit counters always do), and the indexes the
sweeper reads - reservations by expiry, events not yet recorded - are kept
per hash slot instead of once: their keys carry a tag chosen to fall in the
same slot as the clients they index (:func:`slot_tag`), and the slots in use
are listed under ``slots`` for the sweeper to visit.

On one server the names are those of every earlier release (``budget:acme``,
one ``expiry``), so an upgrade finds what the running proxies hold.
"""

from __future__ import annotations

import binascii
import functools

__all__ = ["SLOTS", "KeyLayout", "slot_of", "slot_tag"]

SLOTS = 16384  # hash slots of a Redis Cluster: CRC16 (XMODEM) of the key's tag, mod 16384


def slot_of(tag: str) -> int:
    """The hash slot of every key whose hash tag is ``{tag}``."""
    return binascii.crc_hqx(tag.encode(), 0) % SLOTS


@functools.cache
def _slot_tags() -> tuple[str, ...]:
    """For each slot, the shortest hexadecimal number falling in it (found
    by counting up: about 315,000 CRCs, under a fifth of a second, once)."""
    found: list[str | None] = [None] * SLOTS
    left, n = SLOTS, 0
    while left:
        tag = format(n, "x")
        slot = slot_of(tag)
        if found[slot] is None:
            found[slot] = tag
            left -= 1
        n += 1
    return tuple(t for t in found if t is not None)


def slot_tag(slot: int) -> str:
    """A hash tag whose keys fall in ``slot``."""
    return _slot_tags()[slot]


class KeyLayout:
    """The keys of one prefix, laid out for a cluster or one server.

    A *shard* names the sweeper's indexes a client's keys share a slot with:
    ``""`` on one server (one index for all), a slot's tag on a cluster.
    """

    def __init__(self, prefix: str, *, cluster: bool) -> None:
        self.prefix = prefix
        self.cluster = cluster
        self.slots = f"{prefix}slots"  # cluster: the shards that have held anything

    def prepare(self) -> None:
        """Work out the slots' tags now, not on the first call served."""
        if self.cluster:
            _slot_tags()

    def _client(self, client_id: str) -> str:
        return f"{{{client_id}}}" if self.cluster else client_id

    def budget(self, client_id: str) -> str:
        return f"{self.prefix}budget:{self._client(client_id)}"

    def held(self, client_id: str) -> str:
        return f"{self.prefix}held:{self._client(client_id)}"

    def counter(self, hold_key: str) -> str:
        """A limit counter (a hold's key starts with its client's tag)."""
        return f"{self.prefix}lim:{hold_key}"

    def shard(self, client_id: str) -> str:
        return slot_tag(slot_of(client_id)) if self.cluster else ""

    def _indexed(self, name: str, shard: str) -> str:
        return f"{self.prefix}{name}:{{{shard}}}" if shard else f"{self.prefix}{name}"

    def expiry(self, shard: str) -> str:
        """Reservations (``client/request``) by expiry time."""
        return self._indexed("expiry", shard)

    def unrecorded(self, shard: str) -> str:
        """Events counted but not yet durable, by ``client/request``."""
        return self._indexed("unrecorded", shard)

    def unrecorded_due(self, shard: str) -> str:
        """The same events by the time a sweeper may take them."""
        return self._indexed("unrecorded:due", shard)

    def client_keys(self, client_id: str) -> list[str]:
        """What admission, release and claiming touch: budget, held, expiry."""
        return [self.budget(client_id), self.held(client_id), self.expiry(self.shard(client_id))]

    def settle_keys(self, client_id: str) -> list[str]:
        """What settlement touches: those and the unrecorded events' keys."""
        shard = self.shard(client_id)
        return [*self.client_keys(client_id), self.unrecorded(shard), self.unrecorded_due(shard)]
