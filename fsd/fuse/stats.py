"""What a FUSE server has served: requests and error replies per opcode, for the status view.

Plain counters the server bumps once per request (no clock, no log): reading them costs the
reader, not the request path. A data operation the thread pool serves outside the server
lock may, rarely, lose an increment to a concurrent one; every other count is exact.
"""

from __future__ import annotations

from typing import Final

from fsd.fuse.abi import op_name

__all__ = ["RequestStats"]

#: Opcodes are below 64 (CUSE_INIT, 4096, is never served): one slot each; slot 0 (no opcode
#: is 0) counts every opcode beyond.
SLOTS: Final = 64


class RequestStats:
    """Counters of one server; ``requests[op]`` and ``errors[op]`` by opcode."""

    __slots__ = ("errors", "malformed", "requests")

    def __init__(self) -> None:
        self.requests = [0] * SLOTS
        self.errors = [0] * SLOTS
        #: Requests refused before decoding (bad length, bad arguments, too short to answer).
        self.malformed = 0

    def by_opcode(self) -> dict[str, tuple[int, int]]:
        """``{opcode name: (requests, errors)}`` for every opcode seen (``"other"``: beyond
        the known range)."""
        return {
            (op_name(opcode) if opcode else "other"): (count, self.errors[opcode])
            for opcode, count in enumerate(self.requests)
            if count
        }
