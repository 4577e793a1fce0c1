"""Waiting for a condition instead of for a while: the order of concurrent
steps is then set by what has happened, not by how busy the machine is."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

from tests.support.fake_upstream import FakeUpstream

T = TypeVar("T")


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], timeout_s: float = 30.0, what: str = "the condition"
) -> None:
    """Return once ``condition()`` holds (looked at every few milliseconds);
    fail after ``timeout_s``, a bound for a stuck test, not a pace."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        assert loop.time() < deadline, f"{what} did not hold within {timeout_s} s"
        await asyncio.sleep(0.005)


async def in_flight_together(upstream: FakeUpstream, calls: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run ``calls`` at once, none answered by ``upstream`` before every one
    has been admitted (and is waiting there) or refused; their results."""
    hold = upstream.hold = asyncio.Event()
    before = len(upstream.received)
    tasks = [asyncio.create_task(call) for call in calls]
    try:
        await eventually(
            lambda: len(upstream.received) - before + sum(t.done() for t in tasks) >= len(tasks),
            what="every call admitted or refused",
        )
    finally:
        hold.set()
    return list(await asyncio.gather(*tasks))
