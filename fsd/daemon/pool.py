"""The request thread pool (``--thread-pool-size``, virtiofsd's name): requests served on
several threads, so that one waiting on a slow backing store does not hold up the others.

A queue worker that has a pool hands each chain to it instead of serving it inline; the
pool's threads call the FUSE server, which lets data operations on open files run
concurrently and serialises the rest (``fsd.fuse.server.CONCURRENT``). The threads are
started and stopped by the connection's nursery (:meth:`WorkerPool.run`).
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import trio

__all__ = ["WorkerPool"]

log = logging.getLogger("fsd.pool")

_Job = tuple[Callable[..., None], tuple[Any, ...]] | None


class WorkerPool:
    """``size`` threads taking jobs in order from one queue (a C ``SimpleQueue``: no Future
    or lock per job)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"a thread pool needs at least one thread, not {size}")
        self.size = size
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on a pool thread (here, once the pool is closed: a queue still
        draining while the connection shuts down must still answer what it took); ``fn``
        must not raise."""
        with self._lock:
            if not self._closed:
                self._jobs.put((fn, args))
                return
        fn(*args)

    def _work(self) -> None:
        get = self._jobs.get
        while (job := get()) is not None:
            fn, args = job
            try:
                fn(*args)
            except Exception:
                log.exception("a pooled request failed")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the threads until cancelled, then let them finish the jobs already queued."""
        async with trio.open_nursery() as nursery:
            for index in range(self.size):
                nursery.start_soon(
                    functools.partial(
                        trio.to_thread.run_sync, self._work, thread_name=f"fsd-pool-{index}"
                    )
                )
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._close()

    def _close(self) -> None:
        with self._lock:
            self._closed = True
            for _ in range(self.size):
                self._jobs.put(None)
