"""Private Postgres and Redis servers for fault tests: each on a free port of
127.0.0.1, in a temporary directory of its own, started, stopped, killed and
restarted by the pid this module started (never the machine's shared servers
on 5432 and 6379).

Postgres refuses to run as root: as root, its binaries run as the ``postgres``
user through ``setpriv`` (which execs, so the pid we hold is the postmaster's).
The methods are coroutines that do their blocking work in a thread, so one
server can serve tests running on different event loops.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Self

import asyncpg
import redis.asyncio as aioredis

from tests.support.processes import free_port

__all__ = [
    "PrivatePostgres",
    "PrivateRedis",
    "PrivateRedisCluster",
    "missing_binaries",
    "postgres_bin_dir",
]

_STARTED: dict[int, subprocess.Popen[bytes]] = {}  # every server process alive, by pid


@atexit.register
def _kill_leftovers() -> None:
    # A run interrupted before its teardown leaves no server behind: only ours, by pid.
    for proc in list(_STARTED.values()):
        if proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


@functools.cache
def postgres_bin_dir() -> Path | None:
    """The newest installed ``/usr/lib/postgresql/N/bin`` with initdb and postgres."""
    found = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")]
    found = [p for p in found if (p / "initdb").is_file() and (p / "postgres").is_file()]
    found.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return found[-1] if found else None


@functools.cache
def missing_binaries() -> tuple[str, ...]:
    """What a private Postgres and Redis need but this machine lacks (looked
    up once: call it outside the event loop first)."""
    missing = []
    if postgres_bin_dir() is None:
        missing.append("Postgres server binaries (/usr/lib/postgresql/*/bin)")
    if shutil.which("redis-server") is None:
        missing.append("redis-server")
    if shutil.which("redis-cli") is None:
        missing.append("redis-cli (to join a private Redis Cluster)")
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        missing.append("setpriv (to run Postgres as the postgres user)")
    return tuple(missing)


def _as_postgres() -> list[str]:
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]


def _private_dir(prefix: str, owner: str | None) -> Path:
    root = Path(tempfile.mkdtemp(prefix=prefix))  # 0700, directly under the temp dir
    if owner is not None and os.geteuid() == 0:
        entry = pwd.getpwnam(owner)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    return root


def _end(proc: subprocess.Popen[bytes], sig: signal.Signals, timeout_s: float) -> None:
    """Send ``sig`` to this one process and wait for it (SIGKILL after ``timeout_s``)."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    _STARTED.pop(proc.pid, None)


class _Started:
    """Used as ``async with``: started on entry, closed (and removed) on exit."""

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class _Server(_Started):
    """What both servers share: one process, a port, a directory, a log."""

    name = "server"

    def __init__(self) -> None:
        self.port = free_port()
        self.root: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Make the directory (once)."""

    async def _answers(self) -> bool:
        raise NotImplementedError

    def _spawn(self) -> None:
        assert self.root is not None
        log = (self.root / f"{self.name}.log").open("ab")
        try:
            self._proc = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        finally:
            log.close()
        _STARTED[self._proc.pid] = self._proc

    def log_tail(self, lines: int = 20) -> str:
        if self.root is None or not (self.root / f"{self.name}.log").is_file():
            return ""
        return "\n".join((self.root / f"{self.name}.log").read_text(errors="replace").splitlines()[-lines:])

    async def start(self, timeout_s: float = 30.0) -> None:
        """Start the server (on the same port as before) and wait until it answers.
        A server killed a moment ago may refuse to start until its last
        children are gone: it is tried again until ``timeout_s``."""
        if self.running:
            return
        await asyncio.to_thread(self._prepare)
        deadline = time.monotonic() + timeout_s
        while True:
            await asyncio.to_thread(self._spawn)
            while self.running and time.monotonic() < deadline:
                if await self._answers():
                    return
                await asyncio.sleep(0.05)
            if self._proc is not None:
                await asyncio.to_thread(_end, self._proc, signal.SIGKILL, 5)
            self._proc = None
            if time.monotonic() >= deadline:
                tail = await asyncio.to_thread(self.log_tail)
                raise RuntimeError(f"private {self.name} did not start on port {self.port}:\n{tail}")
            await asyncio.sleep(0.2)

    async def stop(self, timeout_s: float = 30.0) -> None:
        """A clean shutdown."""
        if self._proc is not None:
            await asyncio.to_thread(_end, self._proc, self._stop_signal, timeout_s)
        self._proc = None

    _stop_signal = signal.SIGTERM

    async def kill(self) -> None:
        """SIGKILL, to the pid this object started: no shutdown at all."""
        if self._proc is not None:
            await asyncio.to_thread(_end, self._proc, signal.SIGKILL, 10)
        self._proc = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def close(self) -> None:
        """Stop the server and remove its directory."""
        await self.stop()
        if self.root is not None:
            await asyncio.to_thread(shutil.rmtree, self.root, True)
            self.root = None


class PrivatePostgres(_Server):
    """A Postgres cluster of its own: trust auth, user ``postgres``, fsync off
    (these tests kill connections and servers, not the machine)."""

    name = "postgres"
    _stop_signal = signal.SIGINT  # "fast" shutdown: sessions are ended, then it exits

    def __init__(self) -> None:
        super().__init__()
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise RuntimeError("no Postgres server binaries under /usr/lib/postgresql")
        self._bin = bin_dir

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _prepare(self) -> None:
        if self.root is not None:
            return
        self.root = _private_dir("taximeter-pg-", "postgres")
        subprocess.run(
            [
                *_as_postgres(),
                str(self._bin / "initdb"),
                "-D",
                str(self.root / "data"),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
        )

    def _command(self) -> list[str]:
        assert self.root is not None
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.root),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "shared_buffers": "16MB",
        }
        options = [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
        return [*_as_postgres(), str(self._bin / "postgres"), "-D", str(self.root / "data"), *options]

    async def _answers(self) -> bool:
        try:
            conn = await asyncpg.connect(self.url(), timeout=2)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return False
        await conn.close()
        return True

    async def create_database(self, name: str | None = None) -> str:
        """A new empty database; its URL."""
        name = name or f"taximeter_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(self.url(), timeout=10)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url(name)

    async def terminate_connections(self, database: str) -> int:
        """End every session on ``database`` but this call's own; how many."""
        conn = await asyncpg.connect(self.url(), timeout=10)
        try:
            ended = await conn.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
        finally:
            await conn.close()
        return int(ended or 0)


class PrivateRedis(_Server):
    """A Redis of its own: no persistence, not daemonised (we hold its pid)."""

    name = "redis"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _prepare(self) -> None:
        if self.root is None:
            self.root = _private_dir("taximeter-redis-", None)

    def _command(self) -> list[str]:
        assert self.root is not None
        return [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.root),
        ]

    async def _answers(self) -> bool:
        client = aioredis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(await client.ping())
        except (OSError, aioredis.RedisError):
            return False
        finally:
            await client.aclose()


class _ClusterNode(PrivateRedis):
    """One primary of a private Redis Cluster."""

    def __init__(self) -> None:
        super().__init__()
        # Its own free port for the cluster bus: the default (port + 10000) may be taken or past 65535.
        self.bus_port = free_port()

    def _command(self) -> list[str]:
        return [
            *super()._command(),
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            str(self.bus_port),
            "--cluster-config-file",
            "nodes.conf",  # in --dir, its own
            "--cluster-node-timeout",
            "2000",
        ]


class PrivateRedisCluster(_Started):
    """A Redis Cluster of its own: three primaries on free ports (no
    replicas), joined by ``redis-cli --cluster create`` and covering all
    16,384 slots; started, stopped and removed by the pids this module holds."""

    def __init__(self, nodes: int = 3) -> None:
        self.nodes = [_ClusterNode() for _ in range(nodes)]

    @property
    def url(self) -> str:
        """Any node's address: the client finds the others from it."""
        return self.nodes[0].url

    async def start(self, timeout_s: float = 60.0) -> None:
        for node in self.nodes:
            await node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        create = ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"]
        done = await asyncio.to_thread(subprocess.run, create, capture_output=True, timeout=timeout_s)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout!r} {done.stderr!r}")
        deadline = time.monotonic() + timeout_s
        while not all([await self._ready(node) for node in self.nodes]):
            if time.monotonic() > deadline:
                raise RuntimeError("the private Redis Cluster did not become ready")
            await asyncio.sleep(0.1)

    @staticmethod
    async def _ready(node: PrivateRedis) -> bool:
        client = aioredis.Redis.from_url(node.url, socket_connect_timeout=1, socket_timeout=1)
        try:
            info = await client.execute_command("CLUSTER", "INFO")
        except (OSError, aioredis.RedisError):
            return False
        finally:
            await client.aclose()
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text and "cluster_slots_assigned:16384" in text

    async def close(self) -> None:
        for node in self.nodes:
            await node.close()
