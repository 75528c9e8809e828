"""Request latency histograms (``--latency-histogram``): how long the daemon took per request.

Off by default, and then nothing on the request path changes: the transport calls the same
handler as without. When asked for, :func:`timed_handler` wraps the transport's handler in
one more Python call that reads the clock twice and bumps one bucket of the request's
opcode: about 5,000 CPU instructions per request (how it was measured: docs/status.md).

What is measured is the daemon's own time for a request, from the moment the transport hands
it over until the reply is written: decoding, plugin hooks, the filesystem's system calls and
encoding, not the wake-up or the ring bookkeeping around it (those are per batch). A request
answered later (SETLKW waiting for a lock) is counted until it was put aside. Pool threads
(``--thread-pool-size``) may, rarely, lose an increment to a concurrent one, as the request
counters may.
"""

from __future__ import annotations

import bisect
import struct
import time
from typing import Final

from fsd.hooks_fuse import RequestHandler
from fsd.sgbuf import Segments

__all__ = ["BOUNDS_NS", "SLOTS", "RequestLatency", "timed_handler"]

#: Bucket upper bounds in nanoseconds: 10 µs to 10 s in 1-2.5-5 steps, then +Inf.
BOUNDS_NS: Final = (
    *(int(mantissa * 10**exponent) for exponent in range(4, 10) for mantissa in (1, 2.5, 5)),
    10_000_000_000,
)
#: One row per opcode below 64 (every opcode FUSE defines but CUSE_INIT); slot 0 gets the rest.
SLOTS: Final = 64

_OPCODE: Final = struct.Struct("<I")  # fuse_in_header: len, then opcode


class RequestLatency:
    """Per opcode: how many requests fell in each bucket (``rows[op][i]``, not cumulative;
    the last is above every bound) and the nanoseconds they took in all (``sums_ns[op]``)."""

    __slots__ = ("rows", "sums_ns")

    def __init__(self) -> None:
        self.rows: list[list[int] | None] = [None] * SLOTS
        self.sums_ns = [0] * SLOTS

    def observe(self, opcode: int, elapsed_ns: int) -> None:
        """Count one request (the tests' and tools' way in; the hot path inlines it)."""
        slot = opcode if 0 < opcode < SLOTS else 0
        row = self.rows[slot]
        if row is None:
            row = self.rows[slot] = [0] * (len(BOUNDS_NS) + 1)
        row[bisect.bisect_left(BOUNDS_NS, elapsed_ns)] += 1
        self.sums_ns[slot] += elapsed_ns


def timed_handler(handler: RequestHandler, latency: RequestLatency) -> RequestHandler:
    """``handler`` with each request's time added to ``latency`` under its opcode.

    The opcode is read from the request's first segment before the handler runs (Linux puts
    the 40-byte in_header in a descriptor of its own); a request too short to have one is
    counted in slot 0 and answered by the handler as usual. Never raises where ``handler``
    does not.
    """
    clock = time.perf_counter_ns
    where = bisect.bisect_left
    bounds = BOUNDS_NS
    width = len(BOUNDS_NS) + 1
    rows = latency.rows
    sums = latency.sums_ns
    opcode_at = _OPCODE.unpack_from

    def handle(request: Segments, reply: Segments) -> int:
        start = clock()
        first = request[0] if request else b""
        opcode = opcode_at(first, 4)[0] if len(first) >= 8 else 0
        size = handler(request, reply)
        elapsed = clock() - start
        if not 0 < opcode < SLOTS:
            opcode = 0
        row = rows[opcode]
        if row is None:
            row = rows[opcode] = [0] * width
        row[where(bounds, elapsed)] += 1
        sums[opcode] += elapsed
        return size

    return handle
