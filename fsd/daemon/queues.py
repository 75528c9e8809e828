"""Virtqueue workers: wait for a kick, drain every available chain, signal the driver once.

Each running queue is served by a worker thread that the connection's nursery supervises
(:meth:`QueueRunner.run`): it blocks in its own ``epoll`` on the kick eventfd and a stop
eventfd, so trio is not on the per-request path at all. Measured with
contrib/bench_transport.py, a trio ``wait_readable`` per kick cost more wall time per request
than the whole FUSE operation (see docs/performance.md). Requests of all queues go through
one lock around the FUSE server, so the inode and handle tables see one request at a time.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import select
import threading
from collections.abc import Callable

import trio

from fsd.daemon.pending import PendingReplies
from fsd.fuse.replies import DEFERRED
from fsd.sgbuf import SgReader, SgWriter
from fsd.virtio.splitq import InvalidChain, QueueBroken, SplitQueue

__all__ = ["ChainHandler", "QueueRunner"]

log = logging.getLogger("fsd.virtio")

BATCH = 256
"""Chains served per wake-up before the worker looks at its stop flag and signals the driver."""

ChainHandler = Callable[[SgReader, SgWriter], int]
"""Serves one request: reads it, writes the reply, returns the reply length, ``NO_REPLY`` or
``DEFERRED`` (``FuseServer.handle``)."""


class QueueRunner:
    """One running virtqueue: its ring, kick and call fds, and the thread serving it.

    The connection task (trio) and the worker thread share three things: the call fd (swapped
    under ``_call_lock``, so it is never written after the connection closed it), the queue's
    memory table (swapped by one attribute store), and ``queue.next_avail``, which the
    connection reads only after :meth:`stop` has returned.
    """

    def __init__(
        self,
        index: int,
        queue: SplitQueue,
        kick_fd: int,
        call_fd: int | None,
        handler: ChainHandler,
    ) -> None:
        self.index = index
        self.queue = queue
        self.kick_fd = kick_fd
        self.handler = handler
        self.chains = 0
        self.interrupts = 0
        self._call_fd = call_fd
        self._call_lock = threading.Lock()
        # Deferred replies (SETLKW) are pushed by other threads. While one is outstanding the
        # worker takes _ring_lock around its used-ring updates too; otherwise it is the only
        # writer and takes no lock (see PendingReplies.waiting).
        self._pending = PendingReplies()
        self._ring_lock = threading.Lock()
        self._stop_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        # Checked between chains: a guest that keeps the ring full must not delay a stop.
        self._stopping = threading.Event()
        self._done = trio.Event()

    def set_call_fd(self, fd: int | None) -> None:
        """Signal through ``fd`` from now on; the old fd may be closed once this returns."""
        with self._call_lock:
            self._call_fd = fd

    def interrupt(self) -> None:
        with self._call_lock:
            fd = self._call_fd
            if fd is None:
                return
            try:
                os.eventfd_write(fd, 1)
            except OSError as exc:
                log.error("queue %d: signalling the call eventfd failed: %s", self.index, exc)
        self.interrupts += 1

    def drain(self) -> None:
        """Serve the available chains, re-arm kicks, and interrupt once if the driver wants.

        At most ``BATCH`` chains per call, so that a guest keeping the ring full still gets its
        interrupts and a stop request is seen; the caller polls again without sleeping when
        chains are left (the kick was not re-armed then).
        """
        queue = self.queue
        handler = self.handler
        waiting = self._pending.waiting
        stopping = self._stopping
        budget = BATCH
        while budget and not stopping.is_set():
            while budget:
                budget -= 1
                try:
                    chain = queue.pop()
                except InvalidChain as exc:
                    log.error("queue %d: %s; returned empty", self.index, exc)
                    queue.push(exc.head, 0)
                    continue
                if chain is None:
                    break
                head, readable, writable = chain
                size = handler(SgReader(readable), SgWriter(writable))
                if size == DEFERRED:
                    # The chain stays ours (its reply space valid) until the reply is sent.
                    self._pending.adopt(functools.partial(self._complete, head))
                elif waiting:
                    with self._ring_lock:
                        queue.push(head, max(size, 0))  # NO_REPLY: nothing written
                else:
                    queue.push(head, max(size, 0))
                self.chains += 1
                if stopping.is_set():
                    break
            if not queue.enable_kicks():
                break
        if waiting:
            with self._ring_lock:
                wanted = queue.needs_interrupt()
        else:
            wanted = queue.needs_interrupt()
        if wanted:
            self.interrupt()

    def _complete(self, head: int, size: int) -> None:
        """Push a deferred reply (any thread) and signal the driver if it wants."""
        with self._ring_lock:
            self.queue.push(head, size)
            wanted = self.queue.needs_interrupt()
        if wanted:
            self.interrupt()

    def serve_blocking(self) -> None:
        """The worker thread: drain, then sleep in epoll until a kick or a stop."""
        kick, stop = self.kick_fd, self._stop_fd
        try:
            with select.epoll(2) as poller:
                poller.register(kick, select.EPOLLIN)
                poller.register(stop, select.EPOLLIN)
                while not self._stopping.is_set():
                    self.drain()
                    # Chains left over from a capped batch: look again without sleeping.
                    timeout = 0 if self.queue.has_available() else -1
                    for fd, _ in poller.poll(timeout):
                        if fd == stop:
                            return
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(kick)
        except QueueBroken as exc:
            log.error("queue %d stopped: %s", self.index, exc)
        except Exception:
            log.exception("queue %d: worker failed; the queue is stopped", self.index)

    async def run(self) -> None:
        """Run the worker thread until :meth:`stop`, cancellation, or a broken queue."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._stop_when_cancelled)
                await trio.to_thread.run_sync(
                    self.serve_blocking, thread_name=f"fsd-queue-{self.index}"
                )
                nursery.cancel_scope.cancel()
        finally:
            # After this no deferred reply touches the ring: the connection may reset it.
            # A stopped queue may be started again (VM pause/resume): answer waiting requests
            # (SETLKW) with EINTR rather than leave the guest waiting for them forever.
            self._pending.close(answer=errno.EINTR)
            os.close(self._stop_fd)
            self._done.set()

    async def _stop_when_cancelled(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            self._request_stop()

    def _request_stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):  # already closed: the worker is gone
            os.eventfd_write(self._stop_fd, 1)

    async def stop(self) -> None:
        """Stop the worker and wait until it has returned (its queue state is then stable).

        Shielded: the caller closes the queue's fds next, which must not happen while the
        worker may still use them, even if the daemon is being cancelled meanwhile."""
        if not self._done.is_set():
            self._request_stop()
            with trio.CancelScope(shield=True):
                await self._done.wait()
