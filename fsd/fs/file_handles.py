"""File handles (``name_to_handle_at``/``open_by_handle_at``) for inodes the guest knows,
instead of one ``O_PATH`` fd each (virtiofsd's ``--inode-file-handles``).

An ``O_PATH`` fd per known inode is simple and pins the inode, but a guest that looks up
millions of files needs millions of fds. A file handle is a few bytes the host filesystem
hands out for an inode and takes back later (``open_by_handle_at`` on any fd of that mount),
so :class:`HandleInodeTable` keeps a handle per inode and an fd only for the most recently
used ones (a bounded LRU), reopening the others by handle when the guest uses them again.

What the ``O_PATH`` fd gave and a handle keeps: a handle carries the inode's generation, so a
deleted inode's handle never opens another file that reused its number; ``open_by_handle_at``
answers ESTALE instead, and the guest gets ESTALE (as from virtiofsd). Inodes are therefore
told apart by handle, never by ``(st_dev, st_ino)`` alone: a number seen again may be a new
file.

``open_by_handle_at`` needs CAP_DAC_READ_SEARCH (root). :func:`probe` checks at start-up that
handles work for the shared directory: ``prefer`` falls back to ``O_PATH`` fds if not,
``mandatory`` refuses to start. Per inode, ``prefer`` also falls back where the filesystem
gives no handles (EOPNOTSUPP) and ``mandatory`` answers the guest EOPNOTSUPP there.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import logging
import os
import resource
import stat
from typing import Final, Literal, NamedTuple

from fsd.fs import procfd
from fsd.fs.inodes import O_PATH_FLAGS, Inode, InodeTable

__all__ = ["FileHandle", "HandleInodeTable", "handle_of", "open_handle", "probe"]

log = logging.getLogger("fsd.fs")

_libc: Final = ctypes.CDLL(None, use_errno=True)
_name_to_handle_at = _libc.name_to_handle_at
_name_to_handle_at.argtypes = [
    ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int,
]  # fmt: skip
_name_to_handle_at.restype = ctypes.c_int
_open_by_handle_at = _libc.open_by_handle_at
_open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
_open_by_handle_at.restype = ctypes.c_int

#: ``MAX_HANDLE_SZ``; ``struct file_handle`` is handle_bytes (u32), handle_type (i32), bytes.
MAX_HANDLE_SZ: Final = 128
_HEADER: Final = 8
_AT_EMPTY_PATH: Final = 0x1000
#: Errors that mean "this filesystem gives no handles", not "this lookup failed".
_UNSUPPORTED: Final = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.EOVERFLOW})

Mode = Literal["prefer", "mandatory"]


class FileHandle(NamedTuple):
    """A host inode's handle: its mount and the kernel's ``struct file_handle`` bytes."""

    mount_id: int
    raw: bytes


def handle_of(fd: int) -> FileHandle | None:
    """The handle of the file ``fd`` refers to (an ``O_PATH`` fd is fine); ``None`` when its
    filesystem gives none. Other errors raise ``OSError``."""
    buf = ctypes.create_string_buffer(_HEADER + MAX_HANDLE_SZ)
    ctypes.c_uint32.from_buffer(buf).value = MAX_HANDLE_SZ
    mount_id = ctypes.c_int()
    if _name_to_handle_at(fd, b"", buf, ctypes.byref(mount_id), _AT_EMPTY_PATH) < 0:
        code = ctypes.get_errno()
        if code in _UNSUPPORTED:
            return None
        raise OSError(code, os.strerror(code))
    size = ctypes.c_uint32.from_buffer(buf).value
    return FileHandle(mount_id.value, buf.raw[: _HEADER + size])


def open_handle(mount_fd: int, handle: FileHandle, flags: int) -> int:
    """``open_by_handle_at``: an fd for the handle's inode (ESTALE once it is deleted)."""
    buf = ctypes.create_string_buffer(handle.raw, len(handle.raw))
    fd = _open_by_handle_at(mount_fd, buf, flags)
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return int(fd)


def probe(root_fd: int) -> str | None:
    """Why file handles cannot be used for the share whose root is ``root_fd``; ``None`` if
    they can (a handle of the root opens again)."""
    try:
        handle = handle_of(root_fd)
        if handle is None:
            return "the filesystem of the shared directory gives no file handles"
        mount_fd = procfd.reopen(root_fd, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.close(open_handle(mount_fd, handle, O_PATH_FLAGS))
        finally:
            os.close(mount_fd)
    except OSError as exc:
        hint = " (opening file handles needs CAP_DAC_READ_SEARCH: run as root)"
        return f"{exc.strerror}{hint if exc.errno == errno.EPERM else ''}"
    return None


def open_fds_budget() -> int:
    """How many inode fds to keep open: a quarter of the fds the open-files limit still
    allows, 16 to 4096 (the rest is for the guest's open files, guest memory, sockets)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 4096
    try:
        in_use = procfd.open_fds()
    except OSError:
        in_use = 0
    return max(16, min(4096, (soft - in_use) // 4))


class HandleInodeTable(InodeTable):
    """An :class:`InodeTable` that keeps file handles and only ``budget`` open fds.

    ``Inode.fd`` is -1 while an inode's fd is closed; :meth:`get` reopens it by handle. An
    operation takes at most three inodes, far below the budget, so an fd is never closed
    under an operation that is using it. Inodes whose filesystem gives no handles
    (``prefer``) keep their ``O_PATH`` fd, as in :class:`InodeTable`.
    """

    __slots__ = ("_budget", "_by_handle", "_mode", "_mount_fds", "_open")

    def __init__(self, root_fd: int, mode: Mode, budget: int | None = None) -> None:
        super().__init__(root_fd)
        self._mode = mode
        self._budget = budget if budget is not None else open_fds_budget()
        self._by_handle: dict[FileHandle, Inode] = {}
        #: mount id → an fd on that mount (not O_PATH: open_by_handle_at refuses those).
        #: The share's own is its root; any other is first seen at its root, which a lookup
        #: must pass (an fd that pins a file the guest may delete would keep it alive).
        self._mount_fds: dict[int, int] = {}
        root = handle_of(root_fd)
        if root is not None:
            self._mount_fd(root.mount_id, root_fd, os.fstat(root_fd))
        #: Handle inodes whose fd is open, least recently used first.
        self._open: collections.OrderedDict[int, Inode] = collections.OrderedDict()

    @property
    def open_fds(self) -> int:
        """How many fds of handle inodes are open (at most the budget)."""
        return len(self._open)

    def get(self, nodeid: int) -> Inode:
        inode = self._by_nodeid.get(nodeid)
        if inode is None:
            raise OSError(errno.EBADF, f"unknown nodeid {nodeid}")
        if inode.handle is not None:
            if inode.fd < 0:
                inode.fd = open_handle(
                    self._mount_fds[inode.handle.mount_id], inode.handle, O_PATH_FLAGS
                )
                self._opened(inode)
            else:
                self._open.move_to_end(nodeid)
        return inode

    def lookup_child(self, parent: Inode, name: bytes) -> tuple[Inode, os.stat_result]:
        # Opened first and told apart by handle: a name's (st_dev, st_ino) may be a number
        # the table holds for a deleted inode.
        fd = os.open(name, O_PATH_FLAGS, dir_fd=parent.fd)
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        return self.adopt(fd, st, parent.child_path(name)), st

    def adopt(self, fd: int, st: os.stat_result, path: bytes) -> Inode:
        try:
            handle = self._handle(fd, st)
        except BaseException:
            os.close(fd)
            raise
        if handle is None:
            return super().adopt(fd, st, path)
        inode = self._by_handle.get(handle)
        if inode is not None:
            inode.refcount += 1
            if inode.path != path:
                self._repath(inode, path)
            if inode.fd < 0:
                inode.fd = fd  # a fresh fd for it: keep that one
                self._opened(inode)
            else:
                os.close(fd)
                self._open.move_to_end(inode.nodeid)
            return inode
        inode = Inode(self._next_nodeid, fd, st, path)
        inode.handle = handle
        self._next_nodeid += 1
        self._by_nodeid[inode.nodeid] = inode
        self._by_handle[handle] = inode
        # The newest inode with this number (an older one may be a deleted file's): renames
        # find inodes by number (InodeTable.moved).
        self._by_key[inode.key] = inode
        self._opened(inode)
        return inode

    def ref(self, st: os.stat_result, path: bytes) -> Inode | None:
        """Only inodes pinned by an fd can be recognised by number (see the module doc)."""
        inode = self._by_key.get((st.st_dev, st.st_ino))
        if inode is None or inode.handle is not None:
            return None
        return super().ref(st, path)

    def forget(self, nodeid: int, nlookup: int) -> None:
        inode = self._by_nodeid.get(nodeid)
        if inode is None or inode.handle is None:
            super().forget(nodeid, nlookup)
            return
        inode.refcount -= nlookup
        if inode.refcount > 0:
            return
        del self._by_nodeid[nodeid]
        del self._by_handle[inode.handle]
        if self._by_key.get(inode.key) is inode:
            del self._by_key[inode.key]
        if inode.fd >= 0:
            del self._open[nodeid]
            os.close(inode.fd)
            inode.fd = -1

    def close_fds(self) -> None:
        """Close every handle inode's fd (they reopen on their next use)."""
        for inode in self._open.values():
            os.close(inode.fd)
            inode.fd = -1
        self._open.clear()

    def clear(self) -> None:
        self.close_fds()
        self._by_handle.clear()
        handle_inodes = [i for i in self._by_nodeid.values() if i.handle is not None]
        for inode in handle_inodes:
            del self._by_nodeid[inode.nodeid]
            if self._by_key.get(inode.key) is inode:
                del self._by_key[inode.key]
        super().clear()

    def close(self) -> None:
        """Close the mount fds too (the filesystem is going away)."""
        self.clear()
        for fd in self._mount_fds.values():
            os.close(fd)
        self._mount_fds.clear()

    # --- helpers ---------------------------------------------------------------------------

    def _handle(self, fd: int, st: os.stat_result) -> FileHandle | None:
        """The handle to keep for ``fd``, or ``None`` to keep ``fd`` itself (``prefer`` on a
        filesystem without handles, or a mount whose only known object cannot be opened)."""
        handle = handle_of(fd)
        if handle is not None and self._mount_fd(handle.mount_id, fd, st):
            return handle
        if self._mode == "mandatory":
            raise OSError(errno.EOPNOTSUPP, "no usable file handle (--inode-file-handles)")
        return None

    def _mount_fd(self, mount_id: int, fd: int, st: os.stat_result) -> bool:
        """Make sure an fd on mount ``mount_id`` is kept, from ``fd`` if it is the first
        seen there. Only directories and regular files are ever opened for it (a device or
        fifo must never be opened by the daemon); False if none can be had."""
        if mount_id in self._mount_fds:
            return True
        if stat.S_ISDIR(st.st_mode):
            flags = os.O_RDONLY | os.O_DIRECTORY
        elif stat.S_ISREG(st.st_mode):
            flags = os.O_RDONLY | os.O_NONBLOCK
        else:
            return False
        self._mount_fds[mount_id] = procfd.reopen(fd, flags | os.O_CLOEXEC)
        return True

    def _opened(self, inode: Inode) -> None:
        """``inode`` has an open fd now: close the least recently used ones over budget."""
        self._open[inode.nodeid] = inode
        self._open.move_to_end(inode.nodeid)
        while len(self._open) > self._budget:
            _, old = self._open.popitem(last=False)
            os.close(old.fd)
            old.fd = -1
