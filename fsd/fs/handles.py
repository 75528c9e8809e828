"""Open file and directory handles: the ``fh`` numbers FUSE hands back on OPEN/OPENDIR.

Data operations on open files run on several threads at once, beside the serialised rest
(see ``fsd.fuse.server.CONCURRENT``): a RELEASE, or DESTROY, may take a handle out of the
table while a read still uses its fd. So a :class:`Handle` owns its fd the way a Python file
object does: the fd is closed when the handle object goes away, which CPython's reference
counting makes the moment the table and the last operation holding it have let go of it. An
fd number is therefore never reused while an operation still reads through it, and the data
operations pay nothing for that (no lock, no counter).
"""

from __future__ import annotations

import errno
import os

from fsd.fuse.filesystem import DirEntry

__all__ = ["Handle", "HandleTable"]


class Handle:
    """A real (non-O_PATH) fd opened for the guest, plus a directory's listing snapshot.

    The listing is taken at the first READDIR from offset 0 and kept, so the offset the
    guest sends back is an index into it: a large directory lists completely and exactly once
    across many READDIR calls even while it changes.
    """

    __slots__ = ("entries", "fd", "generation", "nodeid")

    def __init__(self, fd: int, nodeid: int) -> None:
        self.fd = fd
        self.nodeid = nodeid
        #: ``None`` marks a name hidden since the snapshot (its cookie stays taken).
        self.entries: list[DirEntry | None] | None = None
        #: The allowlist generation ``entries`` was last filtered with.
        self.generation = 0

    def __del__(self) -> None:
        # Gone from the table and from every operation that held it (see the module). A plain
        # try, not contextlib.suppress: this runs once per RELEASE, and suppress is three
        # Python calls.
        try:  # noqa: SIM105
            os.close(self.fd)
        except OSError:
            pass


class HandleTable:
    """fh → :class:`Handle`; numbers are never reused within a session."""

    __slots__ = ("_handles", "_next_fh")

    def __init__(self) -> None:
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1

    def __len__(self) -> int:
        return len(self._handles)

    def add(self, fd: int, nodeid: int) -> int:
        """Own ``fd`` and return its new fh."""
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = Handle(fd, nodeid)
        return fh

    def get(self, fh: int) -> Handle:
        """The handle for ``fh``; EBADF if the guest never opened it or released it."""
        handle = self._handles.get(fh)
        if handle is None:
            raise OSError(errno.EBADF, f"unknown file handle {fh}")
        return handle

    def of(self, fh: int, nodeid: int) -> Handle:
        """The handle ``fh`` if it is open on ``nodeid``; EBADF otherwise.

        Every fh-based request names its inode too: the allowlist and plugins judge that
        inode's path, so a handle of another inode must not be acted on instead. Hold on to
        the returned handle while using its fd: it keeps the fd open.
        """
        handle = self._handles.get(fh)
        if handle is None or handle.nodeid != nodeid:
            raise OSError(errno.EBADF, f"file handle {fh} is not open on nodeid {nodeid}")
        return handle

    def has_nodeid(self, nodeid: int) -> bool:
        """Whether any open handle is on ``nodeid`` (a scan: only when locks are held)."""
        return any(h.nodeid == nodeid for h in list(self._handles.values()))

    def close(self, fh: int) -> None:
        """Release ``fh``; its fd closes now, or when the last operation using it returns.
        EBADF if unknown."""
        if self._handles.pop(fh, None) is None:
            raise OSError(errno.EBADF, f"unknown file handle {fh}")

    def clear(self) -> None:
        """Release every handle (DESTROY)."""
        self._handles = {}
