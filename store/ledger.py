"""The ledger writer: records usage events off the response's critical path.

Handlers hand events to :meth:`LedgerWriter.submit` and move on; one
background task writes them to the store. The queue is bounded (a full queue
makes submitters wait: back-pressure, never loss). An event leaves the queue
only once its transaction has committed, or once it has been set aside.

The task never ends on an error:

- the store unavailable (``StoreUnavailable``: connection lost, server down,
  pool closed, disk busy) is retried with capped exponential backoff, for as
  long as it takes (or until :meth:`LedgerWriter.close` gives up);
- the store refusing the data (``DataRejected``: a number out of range, a
  character its text cannot hold) splits the batch in halves until the
  refused events are found; the others are recorded, each refused one is
  *quarantined*: kept in the store's ``quarantined_events`` with the error,
  logged (``ledger_event_quarantined``) and reported to ``on_quarantined``.
  If even that row is refused the event is logged (``ledger_event_dropped``)
  and let go: nothing is retried forever;
- anything else (a bug, a driver error no backend maps) is logged with its
  traceback and retried a few times, then treated as the data's fault.

``pending`` (the ``taximeter_ledger_pending_events`` gauge) counts events not
yet durable; a quarantined or dropped event counts as written.

An event may be submitted with ``after``: it is not written before that
future is done (or ``after_wait_s`` has passed). A settled call passes the
gate's count of its usage, so that while the gate answers, a process that
dies between the two leaves both done, or the event kept by the gate for a
survivor to record - not the store counting a call whose reservation the
gate still holds. (A call settled while its client's copy is being rebuilt
is counted by that rebuild, after its event is written: that window stays.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TypeVar

from taximeter.pricing.models import UsageEvent
from taximeter.store.base import DataRejected, Ledger, RecordResult, StoreUnavailable, printable

__all__ = ["LedgerWriter"]

log = logging.getLogger("taximeter.ledger")

OnRecorded = Callable[[UsageEvent, RecordResult], Awaitable[None]]
OnQuarantined = Callable[[UsageEvent, str], None]
T = TypeVar("T")
_Queued = tuple[UsageEvent, "asyncio.Future[None] | None"]

_UNEXPECTED_TRIES = 3  # an error no backend maps, seen this often on one batch, is the data's
_FIRST_DELAY_S = 0.05


@dataclass(frozen=True, slots=True)
class _Refused:
    """The store will not take these events as they are."""

    error: str


def _system_clock() -> datetime:
    return datetime.now(UTC)


class LedgerWriter:
    def __init__(
        self,
        store: Ledger,
        *,
        max_pending: int = 10_000,
        on_recorded: OnRecorded | None = None,
        on_quarantined: OnQuarantined | None = None,
        retry_max_s: float = 5.0,
        batch_max: int = 500,
        linger_s: float = 0.002,
        after_wait_s: float = 2.0,
        clock: Callable[[], datetime] = _system_clock,
    ) -> None:
        self._batch_max = batch_max
        self._linger_s = linger_s
        self._after_wait_s = after_wait_s
        self._flushing = 0  # callers waiting in flush(): no lingering for them
        self._store = store
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue(max_pending)
        self._on_recorded = on_recorded
        self._on_quarantined = on_quarantined
        self._retry_max_s = retry_max_s
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._submitted = 0  # sequence number of the last event submitted
        self._written = 0  # ... and of the last one durable (the queue is FIFO)
        self._progress = asyncio.Condition()
        self._writing = asyncio.Lock()  # held while an event is written; see paused()

    @property
    def pending(self) -> int:
        """Events accepted but not yet durable in the store (or set aside)."""
        return self._submitted - self._written

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="taximeter-ledger")

    @property
    def alive(self) -> bool:
        """Whether the writer task is running (only :meth:`close` ends it)."""
        return self._task is not None and not self._task.done()

    async def submit(self, event: UsageEvent, after: asyncio.Future[None] | None = None) -> int:
        """Queue ``event`` for recording (waits only while the queue is full),
        written once ``after`` is done; its sequence number: it is durable
        once ``written`` reaches it."""
        await self._queue.put((event, after))
        self._submitted += 1  # once queued (nothing runs in between): a sequence is its place
        return self._submitted

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

    async def close(self, timeout_s: float | None = 25.0) -> None:
        """Flush, for at most ``timeout_s`` (None: however long it takes), then
        stop the writer task. Until then a store that is down is retried; the
        events it still has not taken are logged as ``ledger_unrecorded``
        (with their count) and lost with the process."""
        task = self._task
        if task is None:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await self.flush()
        except TimeoutError:
            log.error("ledger_unrecorded", extra={"events": self.pending, "waited_s": timeout_s})
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self._task = None

    async def _run(self) -> None:
        batch: list[UsageEvent] = []
        while True:
            try:
                if not batch:
                    batch = await self._gather()
                async with self._writing:
                    await self._write(batch)  # empties it, event by event as each is done
            except Exception:
                # Not reached by any failure of the store (_write handles them all);
                # a bug here must not end the task: the batch is tried again.
                log.exception("ledger_writer_error", extra={"events": len(batch)})
                await asyncio.sleep(self._retry_max_s)

    async def _gather(self) -> list[UsageEvent]:
        # Whatever has queued up goes in one transaction. A short linger lets
        # a batch gather the calls finishing meanwhile: one commit for many
        # instead of one each (the writes are off the responses' path, so this
        # delays durability by linger_s, never an answer).
        queued = [await self._queue.get()]
        self._drain(queued)
        if len(queued) < self._batch_max and self._linger_s > 0 and not self._flushing:
            await asyncio.sleep(self._linger_s)
            self._drain(queued)
        waiting = [after for _, after in queued if after is not None and not after.done()]
        if waiting:  # bounded: a gate that hangs must not stop the ledger
            await asyncio.wait(waiting, timeout=self._after_wait_s)
        return [event for event, _ in queued]

    def _drain(self, batch: list[_Queued]) -> None:
        while len(batch) < self._batch_max:
            try:
                batch.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                return

    async def _write(self, batch: list[UsageEvent]) -> None:
        """Record ``batch``; events the store refuses are found by halving and
        quarantined. Each part done leaves the front of ``batch`` (parts are
        done in order), so ``written`` stays a sequence number."""
        parts = [list(batch)]  # a stack: the earliest part on top
        patience = _UNEXPECTED_TRIES
        while parts:
            part = parts.pop()
            outcome = await self._persist(partial(self._store.record_many, part), len(part), patience)
            if isinstance(outcome, _Refused):
                if patience > 1:  # the whole batch: said once, however many halvings follow
                    log.warning("ledger_batch_refused", extra={"events": len(part), "error": outcome.error})
                patience = 1  # the rest are parts of a batch already tried: no more patience
                if len(part) > 1:
                    half = len(part) // 2
                    parts += [part[half:], part[:half]]
                    continue
                await self._set_aside(part[0], outcome.error)
            else:
                await self._tell(part, outcome)
            del batch[: len(part)]
            await self._advance(len(part))

    async def _persist(
        self, operation: Callable[[], Awaitable[T]], events: int, patience: int
    ) -> T | _Refused:
        """``operation()``, retried with capped backoff while the store is
        unavailable; _Refused once the store refuses the data, or once an
        unexpected error has happened ``patience`` times."""
        delay = _FIRST_DELAY_S
        unexpected = 0
        while True:
            try:
                return await operation()
            except DataRejected as exc:
                return _Refused(str(exc))
            except StoreUnavailable as exc:
                log.warning("ledger_retry", extra={"events": events, "error": str(exc), "retry_in_s": delay})
            except Exception as exc:
                unexpected += 1
                log.exception("ledger_write_failed", extra={"events": events, "attempt": unexpected})
                if unexpected >= patience:
                    return _Refused(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry_max_s)

    async def _set_aside(self, event: UsageEvent, error: str) -> None:
        """Quarantine an event the store refused. It was never added to the
        store's counters. The gate may already count its usage (the call
        settled there before it reached the ledger): that stays until the
        gate's copy is next rebuilt from the store. Left so on purpose: it errs
        on the client being charged, never on spend going through uncounted."""
        fields = {"request_id": printable(event.request_id), "client": printable(event.client_id)}

        async def keep() -> None:
            await self._store.quarantine(event, error, self._clock())

        refused = await self._persist(keep, 1, _UNEXPECTED_TRIES)
        if isinstance(refused, _Refused):
            log.error("ledger_event_dropped", extra={**fields, "error": printable(refused.error, 500)})
            return
        log.error("ledger_event_quarantined", extra={**fields, "error": printable(error, 500)})
        if self._on_quarantined is not None:
            try:
                self._on_quarantined(event, error)
            except Exception:
                log.exception("ledger_hook_failed", extra={"request_id": fields["request_id"]})

    async def _tell(self, events: list[UsageEvent], results: list[RecordResult]) -> None:
        if self._on_recorded is None:
            return
        for event, result in zip(events, results, strict=True):
            try:
                await self._on_recorded(event, result)
            except Exception:
                log.exception("ledger_hook_failed", extra={"request_id": printable(event.request_id)})

    async def _advance(self, count: int) -> None:
        for _ in range(count):
            self._queue.task_done()
        async with self._progress:
            self._written += count
            self._progress.notify_all()
