"""The ledger writer: records usage events off the response's critical path.

Handlers hand events to :meth:`LedgerWriter.submit` and move on; one
background task writes them to the store. The queue is bounded (a full queue
makes submitters wait: back-pressure, never loss). A store that is down is
retried with capped exponential backoff, and an event leaves the queue only
once its transaction has committed. ``pending`` is what the
``taximeter_ledger_pending_events`` gauge shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from taximeter.store.base import RecordResult, Store, StoreUnavailable
from taximeter.store.models import UsageEvent

__all__ = ["LedgerWriter"]

log = logging.getLogger("taximeter.ledger")

OnRecorded = Callable[[UsageEvent, RecordResult], Awaitable[None]]


class LedgerWriter:
    def __init__(
        self,
        store: Store,
        *,
        max_pending: int = 10_000,
        on_recorded: OnRecorded | None = None,
        retry_max_s: float = 5.0,
        batch_max: int = 500,
        linger_s: float = 0.002,
    ) -> None:
        self._batch_max = batch_max
        self._linger_s = linger_s
        self._flushing = 0  # callers waiting in flush(): no lingering for them
        self._store = store
        self._queue: asyncio.Queue[UsageEvent] = asyncio.Queue(max_pending)
        self._on_recorded = on_recorded
        self._retry_max_s = retry_max_s
        self._task: asyncio.Task[None] | None = None
        self._submitted = 0  # sequence number of the last event submitted
        self._written = 0  # ... and of the last one durable (the queue is FIFO)
        self._progress = asyncio.Condition()
        self._writing = asyncio.Lock()  # held while an event is written; see paused()

    @property
    def pending(self) -> int:
        """Events accepted but not yet durable in the store."""
        return self._submitted - self._written

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="taximeter-ledger")

    @property
    def written(self) -> int:
        """Sequence number of the last event that is durable."""
        return self._written

    async def submit(self, event: UsageEvent) -> int:
        """Queue ``event`` for recording (waits only while the queue is full);
        its sequence number: it is durable once ``written`` reaches it."""
        self._submitted += 1
        sequence = self._submitted
        await self._queue.put(event)
        return sequence

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[int]:
        """No event is written inside this block; yields ``written``, exact for
        the whole block (a read of the store then holds events up to it)."""
        async with self._writing:
            yield self._written

    async def flush(self) -> None:
        """Wait until every event submitted before this call is durable
        (later ones do not keep it waiting)."""
        target = self._submitted
        self._flushing += 1
        try:
            async with self._progress:
                await self._progress.wait_for(lambda: self._written >= target)
        finally:
            self._flushing -= 1

    async def close(self) -> None:
        """Flush, then stop the writer task."""
        if self._task is None:
            return
        await self.flush()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            # Whatever has queued up goes in one transaction. A short linger
            # lets a batch gather the calls finishing meanwhile: one commit for
            # many instead of one each (the writes are off the responses' path,
            # so this delays durability by linger_s, never an answer).
            batch = [await self._queue.get()]
            self._drain(batch)
            if len(batch) < self._batch_max and self._linger_s > 0 and not self._flushing:
                await asyncio.sleep(self._linger_s)
                self._drain(batch)
            async with self._writing:
                try:
                    await self._write(batch)
                finally:
                    for _ in batch:
                        self._queue.task_done()
                    async with self._progress:
                        self._written += len(batch)
                        self._progress.notify_all()

    def _drain(self, batch: list[UsageEvent]) -> None:
        while len(batch) < self._batch_max:
            try:
                batch.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                return

    async def _write(self, batch: list[UsageEvent]) -> None:
        delay = 0.05
        while True:
            try:
                # A retry after an ambiguous failure is safe: recording is idempotent.
                results = await self._store.record_many(batch)
                break
            except StoreUnavailable as exc:
                log.warning(
                    "ledger_retry",
                    extra={"events": len(batch), "error": str(exc), "retry_in_s": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
        if self._on_recorded is not None:
            for event, result in zip(batch, results, strict=True):
                try:
                    await self._on_recorded(event, result)
                except Exception:
                    log.exception("ledger_hook_failed", extra={"request_id": event.request_id})
