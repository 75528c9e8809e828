"""Mapping the VMM's memory fds: the I/O half of :mod:`fsd.virtio.memory`."""

from __future__ import annotations

import mmap
import os
import stat

from fsd.vhost_user.messages import MemoryRegion
from fsd.virtio.memory import GuestRegion

__all__ = ["map_region"]

MAP_NORESERVE = 0x4000  # not in Python 3.11's mmap module


def map_region(region: MemoryRegion, fd: int) -> GuestRegion:
    """mmap ``fd`` as ``region`` (shared, read-write) and close ``fd``.

    Python's mmap keeps its own dup of the fd; the mapping lives as long as a view of it.
    A region that reaches past the end of its file is refused (ValueError): touching the
    missing part would kill the daemon with SIGBUS."""
    try:
        info = os.fstat(fd)
        end = region.mmap_offset + region.size
        if stat.S_ISREG(info.st_mode) and info.st_size < end:
            raise ValueError(
                f"memory region at gpa {region.guest_phys_addr:#x} needs {end} bytes of its "
                f"fd, which has {info.st_size}"
            )
        if region.mmap_offset % mmap.ALLOCATIONGRANULARITY == 0:
            mapping = mmap.mmap(
                fd,
                region.size,
                flags=mmap.MAP_SHARED | MAP_NORESERVE,
                prot=mmap.PROT_READ | mmap.PROT_WRITE,
                offset=region.mmap_offset,
            )
            view = memoryview(mapping)
        else:
            mapping = mmap.mmap(
                fd,
                region.size + region.mmap_offset,
                flags=mmap.MAP_SHARED | MAP_NORESERVE,
                prot=mmap.PROT_READ | mmap.PROT_WRITE,
            )
            view = memoryview(mapping)[region.mmap_offset :]
    finally:
        os.close(fd)
    return GuestRegion(region.guest_phys_addr, view)
