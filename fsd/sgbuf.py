"""Scatter-gather buffers: the one interface between a transport and the FUSE server.

A virtqueue hands the FUSE server a request spread over several guest-memory segments and a
reply area spread over several more; ``/dev/fuse`` hands it one buffer each way. Both are
plain lists of memoryviews, so no object is built per request; these functions read and
write across segment boundaries. File data moves between a host file and guest memory with
``os.preadv``/``os.pwritev`` over :func:`views` and no copy.

Linux's virtio_fs puts each part of a request in a descriptor of its own (the in_header, each
argument, each data page; the out_header, each reply argument, each data page), so the common
cases are whole segments and the functions try those first.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["BufferTooShort", "Segments", "capacity", "gather", "scatter", "views"]

Segments = Sequence[memoryview]
"""A request's readable or a reply's writable memory, in order."""


class BufferTooShort(ValueError):
    """A request ended before a field it must contain, or a reply did not fit."""


def capacity(segments: Segments) -> int:
    """The number of bytes in ``segments``."""
    return sum(map(len, segments))


def gather(segments: Segments, offset: int, n: int) -> bytes:
    """A copy of ``n`` bytes from ``offset`` (guest memory can change under us: names and
    arguments are copied once and then checked)."""
    if offset < 0 or n < 0:
        raise BufferTooShort(f"bad range {offset}+{n}")
    out = []
    want = n
    for seg in segments:
        size = len(seg)
        if offset >= size:
            offset -= size
            continue
        take = min(size - offset, want)
        out.append(seg[offset : offset + take])
        want -= take
        offset = 0
        if not want:
            break
    if want:
        raise BufferTooShort(f"wanted {n} bytes, {n - want} there")
    return out[0].tobytes() if len(out) == 1 else b"".join(out)


def views(segments: Segments, offset: int, n: int) -> list[memoryview]:
    """Zero-copy views covering ``[offset, offset + n)``; whole segments are handed out as
    they are (a large READ's reply space is one segment per page after the header)."""
    if offset < 0 or n < 0:
        raise BufferTooShort(f"bad range {offset}+{n}")
    out: list[memoryview] = []
    want = n
    for seg in segments:
        if not want:
            break
        size = len(seg)
        if offset >= size:
            offset -= size
            continue
        take = min(size - offset, want)
        out.append(seg if take == size else seg[offset : offset + take])
        want -= take
        offset = 0
    if want:
        raise BufferTooShort(f"wanted {n} bytes, {n - want} there")
    return out


def scatter(segments: Segments, offset: int, data: bytes | bytearray | memoryview) -> None:
    """Copy ``data`` into ``segments`` from ``offset`` (BufferTooShort if it does not fit)."""
    n = len(data)
    first = segments[0] if segments else None
    if first is not None and offset + n <= len(first):
        first[offset : offset + n] = data
        return
    pos = 0
    src = memoryview(data).cast("B")
    for view in views(segments, offset, n):
        size = len(view)
        view[:] = src[pos : pos + size]
        pos += size
