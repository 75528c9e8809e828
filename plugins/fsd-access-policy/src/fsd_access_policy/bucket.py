"""A token bucket: at most ``burst`` operations at once, ``per_second`` sustained."""

from __future__ import annotations

import threading

__all__ = ["TokenBucket"]


class TokenBucket:
    """Refilled lazily from the clock value each :meth:`take` is given (no timer, no thread).

    Several queue threads take from one bucket at once, so :meth:`take` holds a lock: its
    read-modify-write would otherwise admit more than ``burst``.
    """

    __slots__ = ("_lock", "burst", "per_second", "stamp", "tokens")

    def __init__(self, per_second: float, burst: float, now: float) -> None:
        self.per_second = per_second
        self.burst = burst
        self.tokens = burst
        self.stamp = now
        self._lock = threading.Lock()

    def take(self, now: float) -> bool:
        """Spend one token if there is one; False means over the limit."""
        with self._lock:
            elapsed = now - self.stamp
            if elapsed > 0:
                self.tokens = min(self.burst, self.tokens + elapsed * self.per_second)
                self.stamp = now
            if self.tokens >= 1:
                self.tokens -= 1
                return True
            return False
