"""Guest memory: guest-physical addresses to bounds-checked memoryviews.

Built over the mmaps of the VMM's memory fds, or over bytearrays in tests. Every access a
descriptor asks for is checked against the table; a bad address raises
:class:`GuestMemoryError`, never an out-of-bounds access. A new memory table builds a new
``GuestMemory``; views handed out keep the old mapping alive until the requests using them are
done (a memoryview pins its mmap), which is what REM_MEM_REG needs.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable
from typing import Final, NamedTuple

__all__ = ["GuestMemory", "GuestMemoryError", "GuestRegion"]


class GuestMemoryError(ValueError):
    """A guest address or length outside the memory table."""


class GuestRegion(NamedTuple):
    gpa: int
    view: memoryview

    @property
    def end(self) -> int:
        return self.gpa + len(self.view)


class GuestMemory:
    """An immutable, sorted set of guest memory regions."""

    __slots__ = ("_ends", "_only", "_regions", "_starts")

    def __init__(self, regions: Iterable[GuestRegion] = ()) -> None:
        ordered = sorted(regions, key=lambda r: r.gpa)
        for a, b in itertools.pairwise(ordered):
            if a.end > b.gpa:
                raise GuestMemoryError(f"regions at {a.gpa:#x} and {b.gpa:#x} overlap")
        self._regions: Final = ordered
        self._starts: Final = [r.gpa for r in ordered]
        self._ends: Final = [r.end for r in ordered]
        # One region is the common case (QEMU's -m up to 2-3 GiB): look up without bisect.
        self._only: Final = ordered[0] if len(ordered) == 1 else None

    @property
    def only_region(self) -> GuestRegion | None:
        """The single region, when there is exactly one (lets hot loops skip the lookup)."""
        return self._only

    @property
    def regions(self) -> list[GuestRegion]:
        return list(self._regions)

    def with_region(self, region: GuestRegion) -> GuestMemory:
        return GuestMemory([*self._regions, region])

    def without_region(self, gpa: int) -> GuestMemory:
        return GuestMemory(r for r in self._regions if r.gpa != gpa)

    def _find(self, gpa: int) -> int:
        i = bisect.bisect_right(self._starts, gpa) - 1
        if i < 0 or gpa >= self._ends[i]:
            raise GuestMemoryError(f"guest address {gpa:#x} is not in guest memory")
        return i

    def view(self, gpa: int, length: int) -> memoryview:
        """A view of ``length`` bytes at ``gpa`` that lies inside one region (rings, tables)."""
        only = self._only
        if only is not None:
            off = gpa - only.gpa
            if off >= 0 and length >= 0 and off + length <= len(only.view):
                return only.view[off : off + length]
        if length < 0:
            raise GuestMemoryError(f"negative length {length}")
        i = self._find(gpa)
        if gpa + length > self._ends[i]:
            raise GuestMemoryError(f"{length} bytes at {gpa:#x} cross the end of a region")
        off = gpa - self._starts[i]
        return self._regions[i].view[off : off + length]

    def views(self, gpa: int, length: int) -> list[memoryview]:
        """Views covering ``length`` bytes at ``gpa``, split where regions meet (buffers)."""
        if length < 0:
            raise GuestMemoryError(f"negative length {length}")
        i = self._find(gpa)
        off = gpa - self._starts[i]
        region_view = self._regions[i].view
        if off + length <= len(region_view):
            return [region_view[off : off + length]]
        out: list[memoryview] = []
        while True:
            take = min(length, len(region_view) - off)
            out.append(region_view[off : off + take])
            length -= take
            if length <= 0:
                return out
            boundary = self._ends[i]
            i += 1
            if i >= len(self._regions) or self._starts[i] != boundary:
                raise GuestMemoryError(f"guest buffer at {gpa:#x} runs into unmapped memory")
            region_view = self._regions[i].view
            off = 0
