"""Open file and directory handles: the ``fh`` numbers FUSE hands back on OPEN/OPENDIR.

Data operations on open files run on several threads at once, beside the serialised rest
(see ``fsd.fuse.server.CONCURRENT``), so a handle in use is pinned (:meth:`HandleTable.use`
/ :meth:`HandleTable.done`): a RELEASE, or DESTROY, that closes it meanwhile leaves the fd
open until its last user is done. Otherwise the number could be reused by another open
while a read still goes to it.
"""

from __future__ import annotations

import errno
import os
import threading

from fsd.fuse.filesystem import DirEntry

__all__ = ["Handle", "HandleTable"]


class Handle:
    """A real (non-O_PATH) fd opened for the guest, plus a directory's listing snapshot.

    The listing is taken at the first READDIR from offset 0 and kept, so the offset the
    guest sends back is an index into it: a large directory lists completely and exactly once
    across many READDIR calls even while it changes.
    """

    __slots__ = ("closing", "entries", "fd", "generation", "nodeid", "users")

    def __init__(self, fd: int, nodeid: int) -> None:
        self.fd = fd
        self.nodeid = nodeid
        #: ``None`` marks a name hidden since the snapshot (its cookie stays taken).
        self.entries: list[DirEntry | None] | None = None
        #: The allowlist generation ``entries`` was last filtered with.
        self.generation = 0
        #: Data operations running on it now; it was released meanwhile if ``closing``.
        self.users = 0
        self.closing = False


class HandleTable:
    """fh → :class:`Handle`; numbers are never reused within a session."""

    __slots__ = ("_handles", "_lock", "_next_fh")

    def __init__(self) -> None:
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._handles)

    def add(self, fd: int, nodeid: int) -> int:
        """Own ``fd`` and return its new fh."""
        with self._lock:
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
        inode's path, so a handle of another inode must not be acted on instead. For the
        serialised operations (nothing else closes handles meanwhile); data operations
        :meth:`use` it.
        """
        handle = self._handles.get(fh)
        if handle is None or handle.nodeid != nodeid:
            raise OSError(errno.EBADF, f"file handle {fh} is not open on nodeid {nodeid}")
        return handle

    def use(self, fh: int, nodeid: int) -> Handle:
        """:meth:`of`, pinned: its fd stays open until :meth:`done`, whatever closes it."""
        with self._lock:
            handle = self._handles.get(fh)
            if handle is None or handle.nodeid != nodeid:
                raise OSError(errno.EBADF, f"file handle {fh} is not open on nodeid {nodeid}")
            handle.users += 1
        return handle

    def done(self, handle: Handle) -> None:
        """A data operation finished with ``handle``; close it if it was released meanwhile."""
        with self._lock:
            handle.users -= 1
            if handle.users or not handle.closing:
                return
        os.close(handle.fd)

    def has_nodeid(self, nodeid: int) -> bool:
        """Whether any open handle is on ``nodeid`` (a scan: only when locks are held)."""
        return any(h.nodeid == nodeid for h in list(self._handles.values()))

    def close(self, fh: int) -> None:
        """Release ``fh`` and close its fd (after its data operations); EBADF if unknown."""
        with self._lock:
            handle = self._handles.pop(fh, None)
            if handle is None:
                raise OSError(errno.EBADF, f"unknown file handle {fh}")
            if handle.users:
                handle.closing = True
                return
        os.close(handle.fd)

    def clear(self) -> None:
        """Close every handle (DESTROY), those in use once their operations are done."""
        with self._lock:
            handles, self._handles = self._handles, {}
            idle = []
            for handle in handles.values():
                if handle.users:
                    handle.closing = True
                else:
                    idle.append(handle.fd)
        for fd in idle:
            os.close(fd)
