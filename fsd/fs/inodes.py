"""The inode table: which host file each FUSE nodeid names, and how often the guest looked it up.

Each entry holds an ``O_PATH`` fd, which pins the host inode (so ``(st_dev, st_ino)`` cannot be
reused while the guest knows it) and lets every later operation work relative to the file
itself, never by a path that a rename on the host could redirect. The path relative to the
share root is kept too (updated on rename) for the allowlist and plugin hooks.

With ``--inode-file-handles`` the table keeps file handles instead and opens fds on demand
(:class:`fsd.fs.file_handles.HandleInodeTable`); the filesystem asks the table for inodes
(:meth:`InodeTable.get`, :meth:`InodeTable.lookup_child`) and never needs to know which.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from fsd.fuse.abi import ROOT_ID

if TYPE_CHECKING:
    from fsd.fs.file_handles import FileHandle

__all__ = ["O_PATH_FLAGS", "Inode", "InodeTable"]

#: How inodes are held: never followed, never inherited.
O_PATH_FLAGS: Final = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_OUT_OF_FDS: Final = frozenset({errno.EMFILE, errno.ENFILE})


class Inode:
    """One host inode the guest knows: its O_PATH fd, file type and lookup count."""

    __slots__ = (
        "_share",
        "_share_of",
        "fd",
        "handle",
        "key",
        "kind",
        "nodeid",
        "path",
        "refcount",
        "submount",
    )

    def __init__(self, nodeid: int, fd: int, st: os.stat_result, path: bytes) -> None:
        self.nodeid = nodeid
        self.fd = fd
        self.key = (st.st_dev, st.st_ino)
        #: ``S_IFMT`` bits; a host inode never changes type.
        self.kind = stat.S_IFMT(st.st_mode)
        self.path = path
        self.refcount = 1
        #: Its file handle when the table keeps handles (then ``fd`` may be -1: closed).
        self.handle: FileHandle | None = None
        #: A directory on another filesystem than its parent's: a mount point in the share.
        self.submount = False
        self._share_of = b""
        self._share: tuple[str, ...] = ()

    def share_path(self) -> tuple[str, ...]:
        """``path`` as the allowlist's name tuple, decoded once per path (renames replace it)."""
        path = self.path
        if path is not self._share_of:
            self._share = tuple(os.fsdecode(path).split("/")) if path else ()
            self._share_of = path
        return self._share

    def child_path(self, name: bytes) -> bytes:
        """The share-relative path of ``name`` inside this directory."""
        return self.path + b"/" + name if self.path else name


class InodeTable:
    """nodeid ↔ host inode map with lookup counts; the root (nodeid 1) is never forgotten."""

    __slots__ = ("_by_key", "_by_nodeid", "_new_run", "_next_nodeid", "root")

    def __init__(self, root_fd: int) -> None:
        st = os.fstat(root_fd)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "shared root is not a directory")
        self.root = Inode(ROOT_ID, root_fd, st, b"")
        self._by_nodeid: dict[int, Inode] = {ROOT_ID: self.root}
        self._by_key: dict[tuple[int, int], Inode] = {self.root.key: self.root}
        self._next_nodeid = ROOT_ID + 1
        #: The last lookup_child found a new inode: look up open-first.
        self._new_run = False

    def __len__(self) -> int:
        return len(self._by_nodeid)

    def __iter__(self) -> Iterator[Inode]:
        return iter(list(self._by_nodeid.values()))

    def get(self, nodeid: int) -> Inode:
        """The inode for a nodeid the guest holds; EBADF for one it does not."""
        inode = self._by_nodeid.get(nodeid)
        if inode is None:
            raise OSError(errno.EBADF, f"unknown nodeid {nodeid}")
        return inode

    def find(self, nodeid: int) -> Inode | None:
        """The inode for ``nodeid``, or None if the guest does not hold it."""
        return self._by_nodeid.get(nodeid)

    def lookup_child(self, parent: Inode, name: bytes) -> tuple[Inode, os.stat_result]:
        """Find ``name`` in directory ``parent`` and count one lookup of it.

        A new inode is pinned by an O_PATH fd whose stat is the source of truth. One the
        table holds needs no fd: stat(2) finds it by number, one syscall (a repeated
        lookup). Stat-first costs a third syscall for a new inode, though, and new inodes
        come in runs (a cold ``stat`` or ``ls -l`` of a directory the guest forgot): after a
        lookup that found a new inode the next goes open-first (open and fstat), until one
        finds an inode the table holds, or no fd is left to open (a known inode is still
        found then, as it needs none).
        """
        path = parent.child_path(name)
        fd = -1
        if self._new_run:
            try:
                fd = os.open(name, O_PATH_FLAGS, dir_fd=parent.fd)
            except OSError as exc:
                if exc.errno not in _OUT_OF_FDS:
                    raise  # else none to spare: a known inode needs none (stat-first)
        if fd < 0:
            st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
            inode = self.ref(st, path)
            if inode is not None:
                self._new_run = False
                return inode, st
            fd = os.open(name, O_PATH_FLAGS, dir_fd=parent.fd)
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        inode = self.adopt(fd, st, path)
        self._new_run = inode.fd == fd  # else adopt() closed it: the inode was known
        return inode, st

    def ref(self, st: os.stat_result, path: bytes) -> Inode | None:
        """Count one more lookup of an inode the table already holds, if it does.

        Safe without opening anything: the held O_PATH fd keeps ``(st_dev, st_ino)`` from
        being reused, so a match is the same host inode.
        """
        inode = self._by_key.get((st.st_dev, st.st_ino))
        if inode is not None:
            inode.refcount += 1
            if inode.path != path and inode is not self.root:
                self._repath(inode, path)
        return inode

    def adopt(self, fd: int, st: os.stat_result, path: bytes) -> Inode:
        """Count one more lookup of the host inode behind ``fd``, which the table now owns.

        If the inode is already known, ``fd`` is closed and the existing entry's count goes up,
        so one host inode always has one nodeid.
        """
        inode = self._by_key.get((st.st_dev, st.st_ino))
        if inode is not None:
            os.close(fd)
            inode.refcount += 1
            if inode.path != path and inode is not self.root:
                self._repath(inode, path)
            return inode
        inode = Inode(self._next_nodeid, fd, st, path)
        self._next_nodeid += 1
        self._by_nodeid[inode.nodeid] = inode
        self._by_key[inode.key] = inode
        return inode

    def forget(self, nodeid: int, nlookup: int) -> None:
        """Drop ``nlookup`` lookups; at zero the nodeid dies and its O_PATH fd is closed."""
        inode = self._by_nodeid.get(nodeid)
        if inode is None or inode is self.root:
            return
        inode.refcount -= nlookup
        if inode.refcount <= 0:
            del self._by_nodeid[nodeid]
            del self._by_key[inode.key]
            os.close(inode.fd)

    def _repath(self, inode: Inode, path: bytes) -> None:
        """The inode was found at a new path (renamed behind the table's back): a directory
        takes the paths of everything known below it along."""
        old = inode.path
        inode.path = path
        if inode.kind == stat.S_IFDIR:
            self._move_below(((old + b"/", path + b"/"),))

    def _move_below(self, prefixes: tuple[tuple[bytes, bytes], ...]) -> None:
        """Rewrite every path starting with an old prefix (one scan for all of them)."""
        for other in self._by_nodeid.values():
            path = other.path
            for old, new in prefixes:
                if path.startswith(old):
                    other.path = new + path[len(old) :]
                    break

    def moved(self, moves: list[tuple[tuple[int, int], bytes, bytes, bool]]) -> None:
        """Record a rename of ``(key, old_path, new_path, is_dir)`` entries, applied together
        (RENAME_EXCHANGE swaps two). Paths below a moved directory are rewritten even when the
        directory itself is not in the table (the guest may have forgotten it but not its
        children)."""
        prefixes = tuple((old + b"/", new + b"/") for _, old, new, is_dir in moves if is_dir)
        if prefixes:
            self._move_below(prefixes)
        for key, _, new, _ in moves:
            inode = self._by_key.get(key)
            if inode is not None and inode is not self.root:
                inode.path = new

    def close(self) -> None:
        """Forget everything but the root, whose fd stays the caller's."""
        self.clear()

    def clear(self) -> None:
        """Forget every inode but the root (DESTROY: the guest dropped all it knew)."""
        for inode in self._by_nodeid.values():
            if inode is not self.root:
                os.close(inode.fd)
        self._by_nodeid = {ROOT_ID: self.root}
        self._by_key = {self.root.key: self.root}
        self.root.refcount = 1
