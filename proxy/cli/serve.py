"""``taximeter serve``: one process, or ``workers`` processes sharing the port
(SO_REUSEPORT) that start and stop together."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from types import FrameType

from aiohttp import web

from taximeter.proxy.cli.startup import STARTUP_FAILURES, failure_line, summary
from taximeter.proxy.logs import written_in_background
from taximeter.proxy.settings import Settings

__all__ = ["serve", "warn_if_exposed"]

log = logging.getLogger("taximeter.serve")


_BACKLOG = 4096


def _run(settings: Settings, reuse_port: bool, *, announce: bool = True) -> int:
    """Serve until stopped; 2 after one line on stderr when it cannot start."""
    try:
        _serve_forever(settings, reuse_port, announce=announce)
    except STARTUP_FAILURES as exc:
        print(failure_line(exc, settings), file=sys.stderr)
        return 2
    return 0


def _worker(settings: Settings) -> None:
    sys.exit(_run(settings, reuse_port=True, announce=False))


def _serve_forever(settings: Settings, reuse_port: bool, *, announce: bool) -> None:
    # Imported here: prometheus-client must see PROMETHEUS_MULTIPROC_DIR first.
    from taximeter.proxy.app import create_app

    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # not on every platform; the standard loop works, slower
        pass

    # Started here, in the process that serves: a thread does not survive a fork.
    with written_in_background():
        web.run_app(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            reuse_port=reuse_port,
            # Thousands of clients opening streams at once wait in the accept queue
            # rather than overflow it (128 by default) and retry seconds later. The
            # kernel caps it at net.core.somaxconn.
            backlog=_BACKLOG,
            access_log=None,  # each call is logged once, as request_metered, without secrets
            # A client that leaves cancels its handler; the upstream call is closed at
            # once and what was delivered is metered (see Services.shielded).
            handler_cancellation=True,
            # Called once the site listens: the summary never precedes a failure.
            print=lambda _: _listening(settings, announce),
            shutdown_timeout=30,
        )


def _listening(settings: Settings, announce: bool) -> None:
    if announce:
        print(summary(settings), flush=True)
    log.info("listening", extra={"host": settings.host, "port": settings.port, "pid": os.getpid()})


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def warn_if_exposed(settings: Settings) -> None:
    """Warn when ``/metrics``, whose labels name clients and their spend, is
    open on an address others can reach."""
    if settings.metrics_token is None and not _is_loopback(settings.host):
        log.warning(
            "metrics_open",
            extra={
                "host": settings.host,
                "hint": "set metrics_token (TAXIMETER_METRICS_TOKEN): /metrics shows every client's spend",
            },
        )


def serve(settings: Settings) -> int:
    warn_if_exposed(settings)  # once, before any worker starts
    if settings.workers == 1:
        return _run(settings, reuse_port=False)
    print(summary(settings) + f"\n  workers    {settings.workers}", flush=True)
    # One directory of metric values shared by the workers: any of them answers
    # a scrape with everyone's counts.
    metrics_dir = tempfile.mkdtemp(prefix="taximeter-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    # fork, not spawn: the children inherit the validated settings as they are.
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=_worker, args=(settings,), daemon=False) for _ in range(settings.workers)
    ]
    for worker in workers:
        worker.start()

    def stop(signum: int, frame: FrameType | None) -> None:
        for worker in workers:
            if worker.pid and worker.is_alive():
                os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for worker in workers:
        worker.join()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return max((w.exitcode or 0) for w in workers)
