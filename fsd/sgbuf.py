"""Scatter-gather buffers: the one interface between a transport and the FUSE server.

A virtqueue hands the FUSE server a request spread over several guest-memory segments and
a reply area spread over several more; ``/dev/fuse`` hands it one buffer each way. Both are
wrapped here so that the FUSE layer never knows where its bytes live, and file data can move
between a host file and guest memory with ``os.preadv``/``os.pwritev`` and no copy.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Final

__all__ = ["BufferTooShort", "SgReader", "SgWriter"]


class BufferTooShort(ValueError):
    """A request ended before a field it must contain, or a reply did not fit."""


class SgReader:
    """Sequential reader over readable segments (request bytes).

    Most requests sit in one or two segments, so the common case (the wanted bytes inside the
    current segment) is a single slice.
    """

    __slots__ = ("_index", "_offset", "_segments", "remaining")

    def __init__(self, segments: Sequence[memoryview]) -> None:
        self._segments: Final = segments
        self._index = 0
        self._offset = 0
        self.remaining: int = sum(len(s) for s in segments)

    def _advance(self, n: int) -> None:
        self.remaining -= n
        while n:
            seg = self._segments[self._index]
            left = len(seg) - self._offset
            if n < left:
                self._offset += n
                return
            n -= left
            self._index += 1
            self._offset = 0
        # Skip exhausted and empty segments so _offset always points into live data.
        while self._index < len(self._segments) and self._offset == len(
            self._segments[self._index]
        ):
            self._index += 1
            self._offset = 0

    def read(self, n: int) -> bytes:
        """Return the next ``n`` bytes (a copy) or raise :class:`BufferTooShort`."""
        if n > self.remaining or n < 0:
            raise BufferTooShort(f"wanted {n} bytes, {self.remaining} left")
        if n == 0:
            return b""
        seg = self._segments[self._index]
        start = self._offset
        if start + n <= len(seg):
            out = bytes(seg[start : start + n])
            self._advance(n)
            return out
        return b"".join(bytes(v) for v in self.take_views(n))

    def read_struct(self, st: struct.Struct) -> tuple[Any, ...]:
        """Unpack the next ``st.size`` bytes with a precompiled struct."""
        n = st.size
        if n > self.remaining:
            raise BufferTooShort(f"wanted {n} bytes, {self.remaining} left")
        seg = self._segments[self._index]
        start = self._offset
        if start + n <= len(seg):
            values = st.unpack_from(seg, start)
            self._advance(n)
            return values
        return st.unpack(self.read(n))

    def read_rest(self) -> bytes:
        """Return every remaining byte (a copy): names and small variable-length payloads."""
        return self.read(self.remaining)

    def take_views(self, n: int) -> list[memoryview]:
        """Return the next ``n`` bytes as zero-copy views (for ``os.pwritev``)."""
        if n > self.remaining or n < 0:
            raise BufferTooShort(f"wanted {n} bytes, {self.remaining} left")
        views: list[memoryview] = []
        want = n
        index, offset = self._index, self._offset
        while want:
            seg = self._segments[index]
            size = len(seg)
            take = min(want, size - offset)
            if take == size:
                views.append(seg)  # a whole segment (WRITE data pages): no slice needed
            elif take:
                views.append(seg[offset : offset + take])
            want -= take
            index += 1
            offset = 0
        self._advance(n)
        return views


class SgWriter:
    """Random-access writer over writable segments (reply space).

    Replies are written header-last: the payload goes at offset 16 (possibly straight from a
    host file through :meth:`views`), then the header with the final length at offset 0.
    """

    __slots__ = ("_segments", "capacity")

    def __init__(self, segments: Sequence[memoryview]) -> None:
        self._segments: Final = segments
        self.capacity: Final = sum(map(len, segments))

    def views(self, offset: int, n: int) -> list[memoryview]:
        """Return zero-copy views covering ``[offset, offset + n)`` (for ``os.preadv``).

        Whole segments are handed out as they are (no slicing): a large READ's reply space is
        one segment per page after the 16-byte header segment.
        """
        if offset < 0 or n < 0 or offset + n > self.capacity:
            raise BufferTooShort(f"reply of {offset + n} bytes exceeds {self.capacity}")
        out: list[memoryview] = []
        if not n:
            return out
        segments = self._segments
        index = 0
        while offset >= len(segments[index]):  # skip to the segment holding ``offset``
            offset -= len(segments[index])
            index += 1
        seg = segments[index]
        if offset or n < len(seg):
            head = seg[offset : offset + n]
            out.append(head)
            n -= len(head)
            index += 1
        append = out.append
        while n:
            seg = segments[index]
            size = len(seg)
            if not size:
                pass
            elif n >= size:
                append(seg)
                n -= size
            else:
                append(seg[:n])
                n = 0
            index += 1
        return out

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` into the reply at ``offset``."""
        n = len(data)
        segs = self._segments
        if segs and offset >= 0 and offset + n <= len(segs[0]):
            segs[0][offset : offset + n] = data
            return
        pos = 0
        src = memoryview(data).cast("B")
        for view in self.views(offset, n):
            size = len(view)
            view[:] = src[pos : pos + size]
            pos += size

    def pack_at(self, st: struct.Struct, offset: int, *values: Any) -> None:
        """Pack a precompiled struct into the reply at ``offset``."""
        first = self._segments[0] if self._segments else None
        if first is not None and offset + st.size <= len(first):
            st.pack_into(first, offset, *values)
        else:
            self.write_at(offset, st.pack(*values))
