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

__all__ = [
    "BufferTooShort",
    "FourBuffers",
    "Segments",
    "capacity",
    "four_segments",
    "gather",
    "scatter",
    "views",
]

Segments = Sequence[memoryview]
"""A request's readable or a reply's writable memory, in order."""

FourBuffers = tuple[int, memoryview, int, int, int, int, int, int, int, int]
"""A request in Linux's most common shape, as places in one memory region: (the transport's
tag for it, the region, then the offset and length of the header, the arguments, the reply
header and the reply). READ 4 KiB, GETATTR, LOOKUP and OPEN come so; served from these
numbers a READ needs no list of views for its request (see ``FuseServer.handle_four``). The
transport has checked every buffer lies inside the region and none is empty."""


class BufferTooShort(ValueError):
    """A request ended before a field it must contain, or a reply did not fit."""


def capacity(segments: Segments) -> int:
    """The number of bytes in ``segments``."""
    return sum(map(len, segments))


def four_segments(buffers: FourBuffers) -> tuple[list[memoryview], list[memoryview]]:
    """The request's and the reply's segments; two buffers that follow each other in memory
    become one segment (the header and arguments often do)."""
    _, region, o0, l0, o1, l1, o2, l2, o3, l3 = buffers
    request = (
        [region[o0 : o1 + l1]] if o0 + l0 == o1 else [region[o0 : o0 + l0], region[o1 : o1 + l1]]
    )
    reply = (
        [region[o2 : o3 + l3]] if o2 + l2 == o3 else [region[o2 : o2 + l2], region[o3 : o3 + l3]]
    )
    return request, reply


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
