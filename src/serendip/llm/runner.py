"""Generator calls with a deadline, for code that answers a person and must not wait long.

A request to a language model can take seconds, and retries multiply that.  ``Runner`` runs
each call on a small pool of threads and waits for it at most ``deadline`` seconds; a call
still running then is left to finish in the background (its text is cached when the
generator is a :class:`~serendip.llm.cache.CachedGenerator`, so the next identical request is
answered at once) and the caller gets None and uses its fallback.  At most ``max_pending``
calls wait or run at once; beyond that a call is refused at once (None), so a slow model
never builds an unbounded backlog.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

__all__ = ["Runner"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class Runner:
    """Calls bounded in time and in number (see the module docstring)."""

    def __init__(self, deadline: float = 10.0, workers: int = 4, max_pending: int = 64) -> None:
        self.deadline = float(deadline)
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers),
                                        thread_name_prefix="serendip-llm")
        self._slots = threading.BoundedSemaphore(max(1, max_pending))
        #: calls that missed their deadline, were refused (too many pending) or raised
        self.late = 0
        self.refused = 0
        self.failed = 0
        self._lock = threading.Lock()

    def _submit(self, fn: Callable[..., T], args: tuple[Any, ...]) -> Future[T] | None:
        if not self._slots.acquire(blocking=False):
            with self._lock:
                self.refused += 1
            return None
        try:
            fut = self._pool.submit(fn, *args)
        except RuntimeError:  # shut down
            self._slots.release()
            return None
        fut.add_done_callback(lambda _f: self._slots.release())
        return fut

    def _result(self, fut: Future[T] | None) -> T | None:
        if fut is None:
            return None
        if not fut.done():
            with self._lock:
                self.late += 1
            return None
        exc = fut.exception()
        if exc is not None:
            with self._lock:
                self.failed += 1
            log.warning("generator call failed: %s", exc)
            return None
        return fut.result()

    def call(self, fn: Callable[..., T], *args: Any) -> T | None:
        """``fn(*args)``, or None when it raised, ran past the deadline or was refused."""
        return self.map([(fn, args)])[0]

    def map(self, calls: Sequence[tuple[Callable[..., T], tuple[Any, ...]]]) -> list[T | None]:
        """Every call started at once; one deadline for all of them together."""
        futures = [self._submit(fn, args) for fn, args in calls]
        live = [f for f in futures if f is not None]
        if live:
            wait(live, timeout=self.deadline)
        return [self._result(f) for f in futures]

    def close(self) -> None:
        """Stop taking calls; calls running finish in the background."""
        self._pool.shutdown(wait=False, cancel_futures=True)
