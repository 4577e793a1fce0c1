"""Open the configured backends by URL (drivers are imported only when used)."""

from __future__ import annotations

from taximeter.store.base import Gate, Store

__all__ = ["open_gate", "open_store"]


async def open_store(database_url: str) -> Store:
    """A connected store for ``postgresql://…`` or ``sqlite:///…``."""
    if database_url.startswith(("postgresql://", "postgres://")):
        from taximeter.store.postgres import PostgresStore

        return await PostgresStore.open(database_url)
    from taximeter.store.sqlite import SqliteStore

    return await SqliteStore.open(database_url)


def open_gate(redis_url: str | None, *, prefix: str, refresh_s: float, redis_cluster: bool = False) -> Gate:
    """The Redis gate when a URL is set (a Redis Cluster's node with
    ``redis_cluster``), else the in-process one."""
    if redis_url:
        from taximeter.store.redis_gate import RedisGate

        return RedisGate.from_url(redis_url, prefix=prefix, cluster=redis_cluster)
    from taximeter.store.local_gate import LocalGate

    return LocalGate(max_age_s=refresh_s)
