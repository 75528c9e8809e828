"""Adaptive polling: a worker spins briefly for the next request before it sleeps.

A client that waits for each reply sends its next request a few microseconds after the
last reply reached it. A worker that went to sleep in the meantime pays a context switch and
a wake-up for it, and on a virtual machine the wake-up of an idle CPU is an inter-processor
interrupt through the hypervisor: tens of microseconds, more than the request itself. Spinning
on a non-blocking ``epoll_wait`` for a short window catches such a request awake.

The window adapts the way QEMU's iothreads adapt theirs (``poll-max-ns``): it grows when a
wait that ended in sleep was short enough that a longer window would have caught it, and
drops to nothing when a wait was longer than the limit, so that a client whose requests are
far apart (a slow guest, an idle share) costs no spinning. The CPU spent spinning is
counted in the daemon's CPU like any other (docs/performance.md measures both).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

__all__ = ["DEFAULT_POLL_MAX_NS", "PollWindow", "SpinningWait", "Waiter", "make_waiter"]

DEFAULT_POLL_MAX_NS = 65536
"""The limit ``fsd mount`` uses by default (65.536 µs, twice QEMU's iothread default).

Measured on a 2-core VM (docs/performance.md): a client's next request comes 30-60 µs after
the reply it waited for (its own wake-up is that slow there), so 32 µs caught few and 64 µs
most: creating files went 1.8x faster for the same CPU. ``fsd serve`` does not poll by
default: a TCG guest's next request comes later than any useful window."""

_FIRST_WINDOW_NS = 4000
"""Where a window starts growing from (QEMU starts at 4 µs too), doubling each time."""

Events = list[tuple[int, int]]
Waiter = Callable[[], Events]
"""Waits for the next events of a worker's epoll: what ``epoll.poll()`` returns."""


class PollWindow:
    """How long to spin before sleeping, adapted to how long the waits turn out to be.

    Sans-I/O: the caller measures and reports; nothing here reads a clock.
    """

    __slots__ = ("limit_ns", "ns")

    def __init__(self, limit_ns: int) -> None:
        if limit_ns < 0:
            raise ValueError(f"the polling limit cannot be negative ({limit_ns} ns)")
        self.limit_ns = limit_ns
        #: The current window; 0 until a short wait shows that spinning would pay.
        self.ns = 0

    def slept(self, waited_ns: int) -> None:
        """A wait spun the whole window, then slept: ``waited_ns`` from its start to its end.

        Longer than the limit: no window would have caught it, so stop spinning. Shorter:
        a longer window might have, so double it (up to the limit).
        """
        if waited_ns > self.limit_ns:
            self.ns = 0
        elif self.ns < self.limit_ns:
            self.ns = min(self.limit_ns, self.ns * 2 if self.ns else _FIRST_WINDOW_NS)


class SpinningWait:
    """Waits for a worker's next epoll events, spinning up to an adaptive window first.

    Called once per wait instead of ``poll(-1)``. ``caught`` counts the waits that ended
    while spinning, ``slept`` those that slept: what the window bought, for tests and logs.
    """

    __slots__ = ("_poll", "caught", "slept", "window")

    def __init__(self, poll: Callable[[float], Events], limit_ns: int) -> None:
        self._poll = poll
        self.window = PollWindow(limit_ns)
        self.caught = 0
        self.slept = 0

    def __call__(self) -> Events:
        poll, window, clock = self._poll, self.window, time.monotonic_ns
        start = clock()
        if window.ns:
            deadline = start + window.ns
            while True:
                events = poll(0)
                if events:
                    self.caught += 1  # caught awake: the window stays as it is
                    return events
                if clock() >= deadline:
                    break
        events = poll(-1)
        self.slept += 1
        window.slept(clock() - start)
        return events

    def summary(self) -> str:
        """What the window bought, for a worker's last log line."""
        return f"{self.caught} waits caught while polling, {self.slept} slept"


def make_waiter(poll: Callable[[float], Events], limit_ns: int) -> Waiter:
    """A wait on ``poll`` (an ``epoll.poll``): :class:`SpinningWait`, or with ``limit_ns`` 0
    the plain blocking ``poll`` with no clock read at all (a ``partial``: no Python frame
    per wake-up)."""
    if not limit_ns:
        return functools.partial(poll, -1)
    return SpinningWait(poll, limit_ns)
