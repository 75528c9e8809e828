"""Writing replies, and what serving a request returns besides a reply length.

``FuseServer.handle`` (and each handler inside it) returns the number of reply bytes it wrote,
or one of the two sentinels here for a reply that is not sent now. Transports test
``size < 0`` once per request and look closer only then.
"""

from __future__ import annotations

from typing import Final

from fsd.fuse.abi import OUT_HEADER
from fsd.sgbuf import Segments, scatter

__all__ = ["DEFERRED", "NO_REPLY", "write_header", "write_reply"]

#: The request is answered later, from another thread (SETLKW; see ``fsd.fuse.deferred``).
DEFERRED: Final = -1
#: The request gets no reply at all (FORGET, BATCH_FORGET, INTERRUPT; DESTROY on virtio-fs).
NO_REPLY: Final = -2

_HDR: Final = OUT_HEADER.size
_pack_header: Final = OUT_HEADER.pack_into


def write_reply(
    out: Segments, unique: int, error: int, payload: bytes | bytearray | memoryview = b""
) -> int:
    """Write ``fuse_out_header`` (``-error``) and ``payload`` into the reply segments; the
    reply's length. Raises ``BufferTooShort`` if they do not fit.

    The common layouts are written in place: one buffer (``/dev/fuse``), or the header and
    the payload in segments of their own (Linux's virtio_fs).
    """
    n = len(payload)
    total = _HDR + n
    first = out[0] if out else None
    if first is not None:
        size = len(first)
        if size >= total:
            _pack_header(first, 0, total, -error, unique)
            if n:
                first[_HDR:total] = payload
            return total
        if size == _HDR and len(out) > 1 and len(out[1]) >= n:
            _pack_header(first, 0, total, -error, unique)
            out[1][:n] = payload
            return total
    scatter(out, 0, OUT_HEADER.pack(total, -error, unique) + bytes(payload))
    return total


def write_header(out: Segments, length: int, unique: int) -> None:
    """Write a success ``fuse_out_header`` for a ``length``-byte reply whose payload is in
    place already (READ's), wherever the header's 16 bytes fall in the segments."""
    first = out[0]
    if len(first) >= _HDR:
        _pack_header(first, 0, length, 0, unique)
    else:
        scatter(out, 0, OUT_HEADER.pack(length, 0, unique))
