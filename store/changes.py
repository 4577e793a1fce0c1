"""Word, from any process to every other, that something an admission reads
has changed - a budget, a pause, a limit, a client's terms, a key, a rate -
so no process decides a call on a copy older than the change (spec section
11). Each process asks :meth:`Changes.news` as a call starts (no I/O) and,
when there is news, drops what it keeps and reads it anew.

- SQLite (one host): an 8-byte word in a file mapped beside the database
  (``<db>-changes``), written by whoever changes something and read from
  memory by every process: a change is seen by the very next call.
- Postgres: ``NOTIFY taximeter_changes`` after the change commits, heard on
  a ``LISTEN`` connection each process keeps (an answer or two after it);
  while that connection is down, copies live their time as before.
- Neither (a test's in-memory store): :class:`NoChanges`.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import time
import uuid
from pathlib import Path
from typing import Protocol

import asyncpg

from taximeter.store.sqlite import sqlite_path

__all__ = ["CHANNEL", "Changes", "FileChanges", "NoChanges", "PostgresChanges", "open_changes"]

log = logging.getLogger("taximeter.store")

CHANNEL = "taximeter_changes"
_WORD = 8


class Changes(Protocol):
    def news(self) -> bool:
        """Whether another process announced a change since this was last asked."""

    def stamp(self) -> object:
        """What changes with every announcement heard (for a reader other than
        :meth:`news`'s one, which compares it with the last it saw)."""

    async def announce(self) -> None:
        """Tell every other process that something admission reads has changed."""

    async def close(self) -> None: ...


class NoChanges:
    """One process alone: there is no one to hear from."""

    def news(self) -> bool:
        return False

    def stamp(self) -> object:
        return 0

    async def announce(self) -> None:
        return None

    async def close(self) -> None:
        return None


class FileChanges:
    """The word beside a SQLite database, mapped into every process's memory."""

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < _WORD:
                os.ftruncate(fd, _WORD)
            self._map = mmap.mmap(fd, _WORD)
        finally:
            os.close(fd)  # the mapping keeps the file
        self._seen = self._map[:_WORD]

    @classmethod
    async def open(cls, database: Path) -> FileChanges:
        return await asyncio.to_thread(cls, database.with_name(database.name + "-changes"))

    def stamp(self) -> object:
        return self._map[:_WORD]

    def news(self) -> bool:
        word = self._map[:_WORD]
        if word == self._seen:
            return False
        self._seen = word
        return True

    async def announce(self) -> None:
        word = (time.time_ns() ^ os.getpid()).to_bytes(_WORD, "little", signed=False)
        # A store to shared memory: every process sees it at once. This one
        # hears it too (one needless re-read): taking it for seen would hide
        # a change another process announced just before.
        self._map[:_WORD] = word

    async def close(self) -> None:
        self._map.close()


class PostgresChanges:
    """``LISTEN``/``NOTIFY`` on a connection of its own."""

    def __init__(self, dsn: str, conn: asyncpg.Connection) -> None:
        self._dsn = dsn
        self._conn = conn
        self._me = uuid.uuid4().hex  # its own announcements come back: not news
        self._heard = 0
        self._seen = 0
        self._reopening: asyncio.Task[None] | None = None
        self._sending = asyncio.Lock()

    @classmethod
    async def open(cls, dsn: str) -> PostgresChanges:
        changes = cls(dsn, await asyncpg.connect(dsn))
        await changes._conn.add_listener(CHANNEL, changes._hear)
        return changes

    def _hear(self, conn: object, pid: int, channel: str, payload: object) -> None:
        if payload != self._me:
            self._heard += 1

    def stamp(self) -> object:
        return self._heard

    def news(self) -> bool:
        if self._conn.is_closed():
            # Deaf until it listens again (Postgres is down, or the connection
            # broke): copies then live their time (key_cache_s, gate_refresh_s),
            # which keeps calls answered while the store is away; once it
            # listens again, what it may have missed counts as news.
            if self._reopening is None or self._reopening.done():
                self._reopening = asyncio.get_running_loop().create_task(self._reopen())
            return False
        if self._heard == self._seen:
            return False
        self._seen = self._heard
        return True

    async def _reopen(self) -> None:
        try:
            conn = await asyncpg.connect(self._dsn)
            await conn.add_listener(CHANNEL, self._hear)
        except Exception as exc:  # whatever it was, the next try waits a second
            log.warning("changes_deaf", extra={"error": str(exc)})
            await asyncio.sleep(1)  # the next call tries again
            return
        self._conn = conn
        self._heard += 1  # announcements made while it was deaf are lost: news, once

    async def announce(self) -> None:
        try:
            async with self._sending:  # one connection: one statement at a time
                await self._conn.execute("SELECT pg_notify($1, $2)", CHANNEL, self._me)
        except Exception as exc:  # closed, busy, down: the others catch up within key_cache_s
            log.warning("changes_unannounced", extra={"error": str(exc)})

    async def close(self) -> None:
        if self._reopening is not None:
            self._reopening.cancel()
        await self._conn.close(timeout=2)


async def open_changes(database_url: str) -> Changes:
    """How the processes sharing ``database_url`` hear of each other's changes."""
    if database_url.startswith("sqlite:///"):
        return await FileChanges.open(Path(sqlite_path(database_url)))
    if database_url.startswith(("postgres://", "postgresql://")):
        return await PostgresChanges.open(database_url)
    return NoChanges()
