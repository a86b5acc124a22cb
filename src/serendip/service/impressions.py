"""Impression logging off the request path: a queue and one background writer thread.

A served list gets its public id at once (:func:`new_impression_id`) and is handed to
:class:`ImpressionWriter`, which stores impressions in batches (``Store.log_impressions``, one
transaction each), so a request never waits for a commit.  The price: impressions still queued
when the process dies (at most about ``flush_interval`` worth, plus the batch being written)
are lost.  Events are not affected: they are written synchronously by their own route.

Logging never fails or blocks a request: past ``max_pending`` queued impressions new ones are
dropped and counted, and a batch whose write raises is logged, counted and skipped.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Protocol

from serendip.errors import ConfigError, DataError
from serendip.store.base import Impression

__all__ = ["ImpressionWriter", "ImpressionSink", "new_impression_id", "MAX_PENDING"]

log = logging.getLogger(__name__)

#: Impressions queued at most; past this, new ones are dropped (and counted).
MAX_PENDING = 100_000


def new_impression_id() -> str:
    """A time-ordered 128-bit id as 32 lowercase hex characters.

    The first 12 characters are the milliseconds since the epoch (48 bits), the other 20 are
    random (80 bits, ``secrets``): ids sort by creation time (give or take clock steps), which
    keeps inserts into the unique index local, and collide with negligible probability.
    """
    return f"{time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF:012x}{secrets.token_hex(10)}"


class ImpressionSink(Protocol):
    """What the writer needs from a store."""

    def log_impressions(self, impressions: Sequence[Impression]) -> int: ...


class ImpressionWriter:
    """Writes submitted impressions in batches from one daemon thread.

    A batch is written when ``max_batch`` impressions are queued, or ``flush_interval``
    seconds after its first one was submitted, whichever comes first.  Thread-safe.

    Counters: ``written`` (impressions stored), ``dropped`` (refused by :meth:`submit`
    because the queue was full), ``failed`` (batch writes that raised) and ``lost``
    (impressions of those batches not stored).  A batch refused as bad data
    (``DataError``, e.g. one invalid impression) is retried one impression at a time, so only
    the bad ones are lost.

    The thread starts on the first :meth:`submit`; :meth:`close` writes what is queued and
    stops it, and a later :meth:`submit` starts a new one (an engine may outlive one app).
    """

    def __init__(
        self,
        store: ImpressionSink,
        max_batch: int = 256,
        flush_interval: float = 0.05,
        max_pending: int = MAX_PENDING,
    ) -> None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ConfigError(f"max_batch must be a positive integer, got {max_batch!r}")
        if not isinstance(flush_interval, int | float) or not 0.0 <= flush_interval <= 60.0:
            raise ConfigError(
                f"flush_interval must be a number of seconds in [0, 60], got {flush_interval!r}"
            )
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ConfigError(f"max_pending must be a positive integer, got {max_pending!r}")
        self.store = store
        self.max_batch = max_batch
        self.flush_interval = float(flush_interval)
        self.max_pending = max_pending
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[Impression] = deque()
        self._submitted = 0  # accepted by submit(), ever
        self._done = 0  # of those, written or given up on
        self._flushing = 0  # threads waiting in flush(): write without waiting to batch
        self._stopping = False
        self._writing: list[Impression] = []  # the batch being written now
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self.lost = 0

    # ------------------------------------------------------------------- producers
    def submit(self, impression: Impression) -> bool:
        """Queue one impression; never blocks on the store.  False when it was dropped."""
        with self._cond:
            if len(self._queue) >= self.max_pending:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 10_000 == 0:
                    log.warning("impression queue full (%d pending): %d impressions dropped",
                                len(self._queue), self.dropped)
                return False
            self._queue.append(impression)
            self._submitted += 1
            if self._thread is None or not self._thread.is_alive():
                self._start()
            self._cond.notify_all()
        return True

    def unwritten(self, user_id: str) -> list[Impression]:
        """``user_id``'s impressions submitted and not yet stored (the batch being written,
        then the queue), in submission order."""
        with self._cond:
            return [imp for imp in (*self._writing, *self._queue) if imp.user_id == user_id]

    @property
    def pending(self) -> int:
        """Impressions submitted and not yet written (or given up on)."""
        with self._cond:
            return self._submitted - self._done

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything submitted before this call is written (or given up on).

        Returns False when ``timeout`` seconds passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._submitted
            self._flushing += 1
            self._cond.notify_all()
            try:
                while self._done < target:
                    if self._thread is None or not self._thread.is_alive():
                        self._start()
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                return True
            finally:
                self._flushing -= 1

    def close(self, timeout: float | None = 10.0) -> bool:
        """Write what is queued and stop the thread; False when ``timeout`` passed first."""
        flushed = self.flush(timeout)
        with self._cond:
            thread = self._thread
            self._stopping = True
            self._cond.notify_all()
        if thread is not None:
            thread.join(timeout)
        with self._cond:
            if self._thread is thread and (thread is None or not thread.is_alive()):
                self._thread = None
                self._stopping = False
        if not flushed:
            log.warning("impression writer closed with %d impressions not written", self.pending)
        return flushed

    def __enter__(self) -> ImpressionWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"written": self.written, "dropped": self.dropped, "failed": self.failed,
                    "lost": self.lost, "pending": self._submitted - self._done}

    # ------------------------------------------------------------------- the thread
    def _start(self) -> None:
        """Start the writer thread (the caller holds ``_cond``)."""
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="serendip-impressions",
                                        daemon=True)
        self._thread.start()

    def _next_batch(self) -> list[Impression] | None:
        """Wait for a batch to write; None when asked to stop with nothing queued."""
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            deadline = time.monotonic() + self.flush_interval
            while (len(self._queue) < self.max_batch and not self._stopping
                   and not self._flushing):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            n = min(self.max_batch, len(self._queue))
            self._writing = [self._queue.popleft() for _ in range(n)]
            return self._writing

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            written = 0
            try:
                written = self._write(batch)  # catches every Exception
            finally:
                with self._cond:
                    self.written += written
                    self.lost += len(batch) - written
                    self._done += len(batch)
                    self._writing = []
                    self._cond.notify_all()

    def _write(self, batch: list[Impression]) -> int:
        """Store a batch; returns how many impressions were stored."""
        try:
            return int(self.store.log_impressions(batch))
        except DataError:
            self._count_failure()
            log.exception("impression batch of %d refused; retrying one at a time", len(batch))
            if len(batch) == 1:
                return 0
            return sum(self._write([imp]) for imp in batch)
        except Exception:
            self._count_failure()
            log.exception("writing %d impressions failed; they are lost", len(batch))
            return 0

    def _count_failure(self) -> None:
        with self._cond:
            self.failed += 1
