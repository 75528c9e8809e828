"""Deferred replies on a transport: sent when their request ends, dropped when it stops.

A deferred request (SETLKW, see ``fsd.fuse.deferred``) is finished on another thread, maybe
long after the transport read it. :class:`PendingReplies` is how a transport keeps them: it
sends each reply under a lock, and :meth:`~PendingReplies.close` (the queue stopped, the mount
went away) makes every later completion a no-op and waits for one being sent, so nothing
writes to a ring or an fd the transport has given up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from fsd.fuse.deferred import Deferred, take_deferred

__all__ = ["PendingReplies"]

log = logging.getLogger("fsd.pending")

Send = Callable[[int], None]
"""Sends a finished request's reply, given its length (0: no reply)."""


class PendingReplies:
    """The deferred requests one transport still has to answer."""

    __slots__ = ("_closed", "_lock", "waiting")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: Adopted, not yet sent. Empty means no other thread is sending or can start to (a
        #: reply leaves the set only after it was sent), so a transport that alone adopts may
        #: skip its own locking then.
        self.waiting: set[Deferred] = set()
        self._closed = False

    def adopt(self, send: Send) -> None:
        """Take the request this thread's last ``handle`` deferred; ``send`` its reply later.

        ``send`` runs on whichever thread finishes the request (here if it already has).
        """
        deferred = take_deferred()
        if deferred is None:
            log.error("the FUSE server deferred a request but left nothing to wait for")
            return
        with self._lock:
            closed = self._closed
            if not closed:
                self.waiting.add(deferred)
        if closed:
            deferred.cancel()
            return

        def done(size: int) -> None:
            with self._lock:
                if self._closed:
                    return
                try:
                    send(size)
                except Exception:
                    log.exception("sending a deferred reply failed")
                self.waiting.discard(deferred)

        deferred.on_done(done)

    def close(self, answer: int | None = None) -> None:
        """Stop sending. With ``answer`` (an errno), first answer every request still waiting
        with it, while their replies can still be sent; the rest are cancelled (their replies
        have nowhere to go)."""
        if answer is not None:
            with self._lock:
                waiting = list(self.waiting)
            for deferred in waiting:
                deferred.abandon(answer)
        with self._lock:
            self._closed = True
            pending = list(self.waiting)
            self.waiting.clear()
        for deferred in pending:
            deferred.cancel()
