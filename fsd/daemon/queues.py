"""Virtqueue tasks: wait for a kick, drain every available chain, signal the driver once.

Everything between two waits is synchronous: the FUSE server runs inline on the trio thread
(cheap syscalls), and trio is touched once per wake-up, not once per request
(prototype-lessons.md §3.3: a trio wait costs 15–20 µs of CPU).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable

import trio

from fsd.sgbuf import SgReader, SgWriter
from fsd.virtio.splitq import InvalidChain, QueueBroken, SplitQueue

__all__ = ["ChainHandler", "QueueRunner"]

log = logging.getLogger("fsd.virtio")

ChainHandler = Callable[[SgReader, SgWriter], int]
"""Serves one request: reads it, writes the reply, returns the reply length."""


class QueueRunner:
    """One running virtqueue: its ring, kick and call fds, and the task serving it."""

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
        self.call_fd = call_fd
        self.handler = handler
        self.cancel_scope = trio.CancelScope()
        self.chains = 0
        self.interrupts = 0

    def interrupt(self) -> None:
        fd = self.call_fd
        if fd is not None:
            try:
                os.eventfd_write(fd, 1)
            except OSError as exc:
                log.error("queue %d: signalling the call eventfd failed: %s", self.index, exc)
            self.interrupts += 1

    def drain(self) -> None:
        """Serve every available chain, re-arm kicks, and interrupt once if the driver wants."""
        queue = self.queue
        handler = self.handler
        while True:
            while True:
                try:
                    chain = queue.pop()
                except InvalidChain as exc:
                    log.error("queue %d: %s; returned empty", self.index, exc)
                    queue.push(exc.head, 0)
                    continue
                if chain is None:
                    break
                head, readable, writable = chain
                queue.push(head, handler(SgReader(readable), SgWriter(writable)))
                self.chains += 1
            if not queue.enable_kicks():
                break
        if queue.needs_interrupt():
            self.interrupt()

    async def run(self) -> None:
        """Serve the queue until cancelled (the front-end stopped it) or it breaks."""
        kick = self.kick_fd
        os.set_blocking(kick, False)
        with self.cancel_scope:
            try:
                while True:
                    self.drain()
                    await trio.lowlevel.wait_readable(kick)
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(kick)
            except QueueBroken as exc:
                log.error("queue %d stopped: %s", self.index, exc)
            except trio.ClosedResourceError:
                pass
