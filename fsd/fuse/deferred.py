"""Deferred replies: a request the server answers later, from another thread (SETLKW).

``FuseServer.handle`` normally returns the reply's length. For a request that must wait (a
blocking lock) it returns :data:`DEFERRED` instead, and the transport, which has not given
the reply space back yet (a virtqueue chain not yet pushed, a ``/dev/fuse`` buffer not yet
reused), calls :func:`take_deferred` on the same thread to get the :class:`Deferred` and
tells it what to do once the reply is written. Transports only pay for this when the return
value is negative, so requests that don't wait cost one comparison.

The hand-over goes through a thread-local slot rather than a server attribute because the
virtqueue workers share one server: between ``handle`` returning and ``take_deferred``,
another queue thread may defer a request of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from fsd.fuse.replies import DEFERRED, write_reply
from fsd.sgbuf import BufferTooShort, Segments

__all__ = ["DEFERRED", "Deferred", "defer", "take_deferred"]

_slot = threading.local()

Completion = Callable[[int], None]
"""Called once with the reply's length (0: no reply to send) when a deferred request ends."""


class Deferred:
    """One request waiting for its reply; finished exactly once, by whoever comes first.

    ``finish`` (the lock waiter, an INTERRUPT, DESTROY) may run before the transport called
    ``on_done``; the length is then kept and handed over when it does. ``cancel`` (the queue
    was stopped: the reply space is gone) makes both a no-op and runs the owner's cleanup.
    """

    __slots__ = ("_callback", "_cancelled", "_lock", "_reply", "_size", "on_cancel", "unique")

    def __init__(self, unique: int, reply: Segments) -> None:
        self.unique = unique
        self._reply: Segments | None = reply
        self._lock = threading.Lock()
        self._callback: Completion | None = None
        self._size: int | None = None
        self._cancelled = False
        #: Set by whoever keeps the request waiting, so a cancel can drop it there.
        self.on_cancel: Callable[[], None] | None = None

    @property
    def done(self) -> bool:
        return self._size is not None

    def finish(self, error: int) -> None:
        """Answer with ``-error`` (0: success) and hand the reply to the transport.

        The reply space and the callback are let go here: the callback usually refers back
        to this object (a cycle only the garbage collector would break), and the reply space
        is guest memory, whose mapping (and the VMM's memory fd) must not outlive the
        connection just because a lock request was answered at its end.
        """
        with self._lock:
            reply = self._reply
            if reply is None or self._cancelled:
                return  # finished already, or cancelled
            try:
                size = write_reply(reply, self.unique, error)
            except BufferTooShort:
                size = 0
            self._size = size
            self._reply = None
            callback, self._callback = self._callback, None
        if callback is not None:
            callback(size)

    def on_done(self, callback: Completion) -> None:
        """Run ``callback(length)`` when finished (at once, here, if it already is)."""
        with self._lock:
            if self._cancelled:
                return
            size = self._size
            if size is None:
                self._callback = callback
                return
        callback(size)

    def abandon(self, error: int) -> None:
        """Stop waiting and answer with ``-error`` now (the transport is stopping, but can
        still send: the guest gets an answer instead of a request that never returns)."""
        with self._lock:
            cleanup, self.on_cancel = self.on_cancel, None
        if cleanup is not None:
            cleanup()
        self.finish(error)

    def cancel(self) -> None:
        """The reply can no longer be sent: forget the callback and stop the wait."""
        with self._lock:
            self._cancelled = True
            self._reply = None
            self._callback = None
            cleanup, self.on_cancel = self.on_cancel, None
        if cleanup is not None:
            cleanup()


def defer(deferred: Deferred) -> None:
    """Server side: park ``deferred`` for this thread's transport to pick up."""
    _slot.pending = deferred


def take_deferred() -> Deferred | None:
    """Transport side: the request this thread's last ``handle`` call deferred, if any."""
    pending: Deferred | None = getattr(_slot, "pending", None)
    _slot.pending = None
    return pending
