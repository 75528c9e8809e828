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
from fsd.daemon.polling import SpinningWait, make_waiter
from fsd.daemon.pool import WorkerPool
from fsd.fuse.replies import DEFERRED
from fsd.sgbuf import FourBuffers, Segments
from fsd.virtio.splitq import OTHER_SHAPE, InvalidChain, QueueBroken, SplitQueue

__all__ = ["ChainHandler", "FourHandler", "QueueRunner"]

log = logging.getLogger("fsd.virtio")

BATCH = 256
"""Chains served per wake-up before the worker looks at its stop flag and signals the driver."""

LARGE_REPLY = 64 * 1024
"""A reply this long is signalled at once, before the next chain is served.

Otherwise a drain interrupts once, at its end: a guest with sixteen 4 KiB reads in flight
then takes one interrupt for them (under TCG, fio qd16 measured ~5 % faster so than with one
per chain, as the Rust virtiofsd signals, EVENT_IDX permitting). A reply of 64 KiB or more
took tens of microseconds to read, though, and the guest can complete it while the next one
is served: Linux sends a 1 MiB O_DIRECT read as three READs at once, and it measured ~9 %
faster so (docs/performance.md)."""

ChainHandler = Callable[[Segments, Segments], int]
"""Serves one request: reads it, writes the reply, returns the reply length, ``NO_REPLY`` or
``DEFERRED`` (``FuseServer.handle``)."""

FourHandler = Callable[[FourBuffers], int]
"""Serves one request of Linux's most common shape, given as places in guest memory, as the
:data:`ChainHandler` beside it would (``FuseServer.handle_four``)."""


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
        *,
        pool: WorkerPool | None = None,
        poll_max_ns: int = 0,
        four_handler: FourHandler | None = None,
    ) -> None:
        self.index = index
        self.queue = queue
        self.kick_fd = kick_fd
        self.handler = handler
        #: Serves Linux's most common chains without views (``SplitQueue.pop_four``); only
        #: when it answers exactly as ``handler`` does, and requests are served inline.
        self._four_handler = four_handler if pool is None else None
        #: Where requests are served (--thread-pool-size); None: inline, one at a time.
        self._pool = pool
        #: --poll-max-ns: how long the worker may spin for the next kick before it sleeps.
        self._poll_max_ns = poll_max_ns
        #: The worker's spinning wait once it runs with polling (its counts are logged).
        self.spin: SpinningWait | None = None
        # Requests handed to the pool and not answered yet: a stop waits for them.
        self._in_flight = 0
        self._idle = threading.Condition()
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
        # A plain attribute: one thread sets it, the worker reads it (the GIL orders both).
        self._stopping = False
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

    def drain(self) -> bool:
        """Serve the available chains, re-arm kicks, and interrupt once if the driver wants.

        At most ``BATCH`` chains per call, so that a guest keeping the ring full still gets its
        interrupts and a stop request is seen; returns True when chains are left (the kick
        was not re-armed: the caller must look again without sleeping). With a pool the
        chains are handed to it and answered from its threads (:meth:`_serve_pooled`).
        """
        queue = self.queue
        four = self._four_handler
        pop_four = queue.pop_four
        # With a four-buffer handler those chains are taken first, the others walked.
        pop = queue.pop if four is None else queue.pop_walked
        push = queue.push
        handler = self.handler
        pool = self._pool
        waiting = self._pending.waiting
        budget = BATCH
        while True:
            while budget and not self._stopping:
                budget -= 1
                buffers = pop_four() if four is not None else OTHER_SHAPE
                if buffers:
                    head = buffers[0]
                    size = four(buffers)  # type: ignore[misc]  # set: buffers came from it
                else:
                    if buffers is None:
                        break
                    try:
                        chain = pop()
                    except InvalidChain as exc:
                        log.error("queue %d: %s; returned empty", self.index, exc)
                        self._push(exc.head, 0)
                        continue
                    if chain is None:
                        break
                    head, readable, writable = chain
                    if pool is not None:
                        self.chains += 1
                        with self._idle:
                            self._in_flight += 1
                        pool.submit(self._serve_pooled, head, readable, writable)
                        continue
                    size = handler(readable, writable)
                self.chains += 1
                if size < 0:
                    if size == DEFERRED:
                        # The chain stays ours (its reply space valid) until it is answered.
                        self._pending.adopt(functools.partial(self._complete, head))
                        continue
                    size = 0  # NO_REPLY: the chain goes back with nothing written
                if waiting:
                    self._push(head, size)
                else:
                    push(head, size)
                if size >= LARGE_REPLY:  # the guest completes it while the next is served
                    self._signal(locked=bool(waiting))
            left = not budget or self._stopping
            if waiting or pool is not None:
                with self._ring_lock:
                    wanted = queue.settle(rearm=not left)
            else:
                wanted = queue.settle(rearm=not left)
            if wanted is not None:
                break
        if wanted:
            self.interrupt()
        return left

    def _signal(self, *, locked: bool) -> None:
        """Interrupt now if the driver wants one for the chains pushed so far (no re-arm:
        the drain goes on). ``locked``: deferred replies may be pushed meanwhile."""
        if locked:
            with self._ring_lock:
                wanted = self.queue.settle(rearm=False)
        else:
            wanted = self.queue.settle(rearm=False)
        if wanted:
            self.interrupt()

    def _serve_pooled(self, head: int, readable: Segments, writable: Segments) -> None:
        """A pool thread: serve one chain and answer it (pushed under the ring lock)."""
        try:
            size = self.handler(readable, writable)
            if size == DEFERRED:
                self._pending.adopt(functools.partial(self._complete, head))
            else:
                self._complete(head, max(size, 0))
        finally:
            with self._idle:
                self._in_flight -= 1
                if not self._in_flight:
                    self._idle.notify_all()

    def _wait_idle(self) -> None:
        """Block until the pool answered every chain this queue handed it."""
        with self._idle:
            self._idle.wait_for(lambda: not self._in_flight)

    def _push(self, head: int, size: int) -> None:
        """Push while deferred replies may be pushed from other threads."""
        with self._ring_lock:
            self.queue.push(head, size)

    def _complete(self, head: int, size: int) -> None:
        """Push a deferred reply (any thread) and signal the driver if it wants."""
        self._push(head, size)
        self._signal(locked=True)

    def serve_blocking(self) -> None:
        """The worker thread: drain, then wait in epoll until a kick or a stop (spinning a
        short adaptive window first with ``poll_max_ns``, see :mod:`fsd.daemon.polling`).

        The kick eventfd is watched edge-triggered and never read: every write to an eventfd
        wakes its waiters, so each kick is an event without a read(2) per wake-up to reset
        the counter (which QEMU only ever adds 1 to: 2**64 kicks away from full).
        """
        kick, stop = self.kick_fd, self._stop_fd
        try:
            with select.epoll(2) as poller:
                poller.register(kick, select.EPOLLIN | select.EPOLLET)
                poller.register(stop, select.EPOLLIN)
                poll = poller.poll
                wait = make_waiter(poll, self._poll_max_ns)
                if isinstance(wait, SpinningWait):
                    self.spin = wait
                drain = self.drain
                while not self._stopping:
                    # Chains left over from a capped batch: look again without sleeping.
                    for fd, _ in poll(0) if drain() else wait():
                        if fd == stop:
                            return
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
            if self._pool is not None:
                # The pool may still be answering what this queue took: those land in the
                # ring too, so they finish first.
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self._wait_idle)
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
        self._stopping = True
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
