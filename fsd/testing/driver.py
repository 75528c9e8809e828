"""The driver side of a split virtqueue, for tests: what the guest's virtio driver does.

Places descriptor chains (direct or through an indirect table) and buffers into guest memory,
publishes them in the avail ring, and collects used entries. It is deliberately independent
of :mod:`fsd.virtio.splitq` so the two check each other.
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = ["DriverQueue", "GuestAllocator"]

DESC: Final = struct.Struct("<QIHH")
USED_ELEM: Final = struct.Struct("<II")
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4


class GuestAllocator:
    """A bump allocator over a range of guest-physical memory."""

    def __init__(self, start: int, end: int) -> None:
        self.start = self.next = start
        self.end = end

    def alloc(self, size: int, align: int = 16) -> int:
        gpa = (self.next + align - 1) & ~(align - 1)
        if gpa + size > self.end:
            raise MemoryError(f"test guest memory exhausted ({size} bytes wanted)")
        self.next = gpa + size
        return gpa

    def reset(self) -> None:
        self.next = self.start


class DriverQueue:
    """A split virtqueue as the driver sees it, over ``memory`` (guest-physical offset 0)."""

    def __init__(
        self, memory: memoryview, rings: GuestAllocator, buffers: GuestAllocator, size: int = 128
    ) -> None:
        self.memory = memory
        self.alloc = buffers
        self.size = size
        self.desc_gpa = rings.alloc(16 * size, 4096)
        self.avail_gpa = rings.alloc(6 + 2 * size, 2)
        self.used_gpa = rings.alloc(6 + 8 * size, 4096)
        memory[self.desc_gpa : self.used_gpa + 6 + 8 * size] = bytes(
            self.used_gpa + 6 + 8 * size - self.desc_gpa
        )
        self.free = list(range(size))
        self.avail_idx = 0
        self.last_used = 0
        self.chains: dict[int, list[tuple[int, int, int]]] = {}
        self.in_flight = 0

    # -- avail side -------------------------------------------------------------------

    def add_chain(self, descriptors: list[tuple[int, int, int]], *, indirect: bool = False) -> int:
        """Publish a chain of (gpa, length, flags) descriptors; returns its head index."""
        mem = self.memory
        if indirect:
            table = self.alloc.alloc(16 * len(descriptors))
            for i, (gpa, length, flags) in enumerate(descriptors):
                more = F_NEXT if i + 1 < len(descriptors) else 0
                DESC.pack_into(mem, table + 16 * i, gpa, length, flags | more, i + 1)
            head = self.free.pop(0)
            DESC.pack_into(
                mem, self.desc_gpa + 16 * head, table, 16 * len(descriptors), F_INDIRECT, 0
            )
        else:
            slots = [self.free.pop(0) for _ in descriptors]
            for i, ((gpa, length, flags), slot) in enumerate(zip(descriptors, slots, strict=True)):
                more = F_NEXT if i + 1 < len(descriptors) else 0
                nxt = slots[i + 1] if more else 0
                DESC.pack_into(mem, self.desc_gpa + 16 * slot, gpa, length, flags | more, nxt)
            head = slots[0]
        self.chains[head] = descriptors
        self.in_flight += 1
        struct.pack_into("<H", mem, self.avail_gpa + 4 + 2 * (self.avail_idx % self.size), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        struct.pack_into("<H", mem, self.avail_gpa + 2, self.avail_idx)
        return head

    def add_request(
        self, request: bytes | list[bytes], reply_size: int | list[int], *, indirect: bool = True
    ) -> int:
        """Copy request bytes into fresh buffers and add a chain with room for a reply."""
        parts = [request] if isinstance(request, bytes) else request
        sizes = [reply_size] if isinstance(reply_size, int) else reply_size
        descriptors: list[tuple[int, int, int]] = []
        for part in parts:
            gpa = self.alloc.alloc(max(len(part), 1))
            self.memory[gpa : gpa + len(part)] = part
            descriptors.append((gpa, len(part), 0))
        for size in sizes:
            gpa = self.alloc.alloc(max(size, 1))
            descriptors.append((gpa, size, F_WRITE))
        return self.add_chain(descriptors, indirect=indirect)

    def set_used_event(self, value: int) -> None:
        struct.pack_into("<H", self.memory, self.avail_gpa + 4 + 2 * self.size, value)

    @property
    def avail_event(self) -> int:
        value: int = struct.unpack_from("<H", self.memory, self.used_gpa + 4 + 8 * self.size)[0]
        return value

    # -- used side --------------------------------------------------------------------

    @property
    def used_idx(self) -> int:
        value: int = struct.unpack_from("<H", self.memory, self.used_gpa + 2)[0]
        return value

    def take_used(self) -> list[tuple[int, int]]:
        """New (head, written length) entries, freeing their descriptors."""
        out = []
        while self.last_used != self.used_idx:
            slot = self.last_used % self.size
            head, length = USED_ELEM.unpack_from(self.memory, self.used_gpa + 4 + 8 * slot)
            out.append((head, length))
            self.last_used = (self.last_used + 1) & 0xFFFF
            self._free_chain(head)
            self.in_flight -= 1
        # Like Linux's virtqueue_get_buf: ask for an interrupt at the next used entry.
        self.set_used_event(self.last_used)
        if not self.in_flight:
            # Buffers of completed chains stay readable until the next add_request.
            self.alloc.reset()
        return out

    def _free_chain(self, head: int) -> None:
        descriptors = self.chains.get(head, [])
        mem = self.memory
        flags = struct.unpack_from("<H", mem, self.desc_gpa + 16 * head + 12)[0]
        if flags & F_INDIRECT or len(descriptors) <= 1:
            self.free.append(head)
            return
        slot = head
        for _ in descriptors:
            self.free.append(slot)
            slot = struct.unpack_from("<H", mem, self.desc_gpa + 16 * slot + 14)[0]

    def written(self, head: int, length: int) -> bytes:
        """The first ``length`` bytes the device wrote into chain ``head``'s writable part."""
        out = bytearray()
        for gpa, size, flags in self.chains[head]:
            if flags & F_WRITE and len(out) < length:
                take = min(size, length - len(out))
                out += self.memory[gpa : gpa + take]
        return bytes(out)
