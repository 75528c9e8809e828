"""The passthrough filesystem: FUSE operations carried out on a host directory.

Every path operation is relative to the parent's O_PATH fd with one validated name component
and never follows a symlink on the host, so the guest cannot walk out of the share (a symlink
in the share is returned as a symlink; the guest's kernel resolves it in the guest). Files are
opened for I/O by reopening the inode's O_PATH fd through ``/proc/self/fd/N``, and only regular
files and directories are ever opened (CVE-2020-35517: a host device node or fifo in the share
must not be opened by the daemon).

Methods are named after FUSE ops, run inline (cheap syscalls) and raise ``OSError``; the FUSE
server turns that into the errno reply.

The daemon process runs with ``os.umask(0)``: the guest has already applied its umask to
every mode it sends (DONT_MASK is not granted), so a host umask would mask modes twice.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Final

from fsd.allowlist.trie import DENIED, FULL, TRAVERSE, Allowlist
from fsd.fs import linux, xattrs
from fsd.fs.credentials import Credentials, MappedCredentials
from fsd.fs.handles import DirEntry, Handle, HandleTable
from fsd.fs.inodes import Inode, InodeTable
from fsd.fs.locks import LockTable
from fsd.fs.options import FsOptions
from fsd.fuse.abi import (
    DT_DIR,
    DT_LNK,
    DT_REG,
    DT_UNKNOWN,
    FATTR_ATIME,
    FATTR_ATIME_NOW,
    FATTR_FH,
    FATTR_GID,
    FATTR_MODE,
    FATTR_MTIME,
    FATTR_MTIME_NOW,
    FATTR_SIZE,
    FATTR_UID,
    FOPEN_CACHE_DIR,
    FOPEN_DIRECT_IO,
    FOPEN_KEEP_CACHE,
    RENAME_EXCHANGE,
)
from fsd.fuse.deferred import Deferred
from fsd.fuse.errors import HiddenByAllowlist

__all__ = ["PassthroughFs"]

_O_PATH_FLAGS: Final = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
#: Open flags the guest may pass through to the host; everything else (O_DIRECT, O_CREAT,
#: O_EXCL, O_NOCTTY, O_PATH, O_TMPFILE, O_NOFOLLOW...) is dropped.
_PASS_FLAGS: Final = (
    os.O_ACCMODE | os.O_APPEND | os.O_TRUNC | os.O_NONBLOCK | os.O_SYNC | os.O_DSYNC | os.O_NOATIME
)
_CREATE_PASS_FLAGS: Final = _PASS_FLAGS | os.O_EXCL
_DEVICE_KINDS: Final = (stat.S_IFCHR, stat.S_IFBLK)
_MKNOD_KINDS: Final = (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFREG)
_UNCHANGED: Final = contextlib.nullcontext()

Entry = tuple[Inode, os.stat_result]
"""A looked-up inode (lookup count already raised) and its attributes."""


class PassthroughFs:
    """A host directory served to one FUSE client."""

    __slots__ = (
        "_confine",
        "_creds",
        "_gated",
        "_maps",
        "_root_dirfd",
        "allowlist",
        "dir_open_flags",
        "file_open_flags",
        "handles",
        "inodes",
        "locks",
        "options",
    )

    def __init__(
        self,
        root: str | os.PathLike[str],
        options: FsOptions | None = None,
        *,
        allowlist: Allowlist | None = None,
    ) -> None:
        self.options = options if options is not None else FsOptions()
        #: The dynamic path allowlist (crosvm's); ``None`` means the whole share, unchecked.
        self.allowlist = allowlist if allowlist is not None else Allowlist.allow_all()
        self._gated = self.allowlist.enabled
        fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self.inodes = InodeTable(fd)
            # A real directory fd: syncfs(2) refuses O_PATH fds.
            self._root_dirfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except BaseException:
            os.close(fd)
            raise
        self.handles = HandleTable()
        #: POSIX and BSD locks the guest holds, and blocking lock requests still waiting.
        self.locks = LockTable()
        # Creating ops run with the caller's fsuid/fsgid (see fsd.fs.credentials).
        # With --uid-map/--gid-map, the caller's guest ids are translated first.
        self._maps = maps = self.options.id_maps
        self._creds = Credentials() if maps is None else MappedCredentials(maps)
        #: Under id maps every permission-relevant op runs as the caller's host ids too: the
        #: guest's kernel checks against translated owners, and guest root need not be host
        #: root, so only the host can confine it (see docs/credentials.md).
        self._confine = maps is not None
        cache = self.options.cache
        self.file_open_flags = {"never": FOPEN_DIRECT_IO, "always": FOPEN_KEEP_CACHE}.get(cache, 0)
        self.dir_open_flags = FOPEN_CACHE_DIR if cache == "always" else 0

    def close(self) -> None:
        """Close every fd the filesystem holds (the root included)."""
        self.destroy()
        os.close(self._root_dirfd)
        os.close(self.inodes.root.fd)

    # --- helpers ---------------------------------------------------------------------------

    def _check_visible(self, parent: Inode, name: bytes) -> None:
        """LOOKUP gate: a name the allowlist denies looks absent (before touching the host)."""
        if self.allowlist.child_access(parent.share_path(), os.fsdecode(name)) is DENIED:
            raise HiddenByAllowlist(errno.ENOENT, "hidden by the allowlist")

    def _check_writable(self, parent: Inode, name: bytes) -> None:
        """Create/remove/rename gate: only a FULL place may gain or lose an entry."""
        if self.allowlist.child_access(parent.share_path(), os.fsdecode(name)) is not FULL:
            raise OSError(errno.EACCES, "not writable under the allowlist")

    def _check_changeable(self, inode: Inode) -> None:
        """SETATTR/xattr gate: not on passage-only ancestors of allowed paths (crosvm leaves
        this open), nor on the share root unless it is FULL (an empty allowlist denies it).

        Other inodes held while their path was revoked keep working, as in crosvm.
        """
        access = self.allowlist.access(inode.share_path())
        if access is TRAVERSE or (access is not FULL and inode is self.inodes.root):
            raise OSError(errno.EACCES, "not writable under the allowlist")

    def _adopt(self, parent: Inode, name: bytes, fd: int) -> Entry:
        """Stat a freshly opened O_PATH fd and enter it into the inode table."""
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        return self.inodes.adopt(fd, st, parent.child_path(name)), st

    def _lookup_child(self, parent: Inode, name: bytes) -> Entry:
        # One syscall when the guest already knows the inode (the common repeat lookup);
        # otherwise open an O_PATH fd to pin it and stat that fd, the source of truth.
        st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        path = parent.child_path(name)
        inode = self.inodes.ref(st, path)
        if inode is not None:
            return inode, st
        fd = os.open(name, _O_PATH_FLAGS, dir_fd=parent.fd)
        return self._adopt(parent, name, fd)

    def _openable(self, inode: Inode, kind: int) -> None:
        if inode.kind != kind:
            if inode.kind == stat.S_IFDIR:
                raise OSError(errno.EISDIR, "is a directory")
            if kind == stat.S_IFDIR:
                raise OSError(errno.ENOTDIR, "not a directory")
            if inode.kind == stat.S_IFLNK:
                raise OSError(errno.ELOOP, "is a symlink")
            raise OSError(errno.EACCES, "refusing to open a special file on the host")

    def _open_flags(self, flags: int) -> int:
        flags &= _PASS_FLAGS
        if self.options.writeback:
            # The guest page cache may read back what it writes and does its own appends.
            if flags & os.O_ACCMODE == os.O_WRONLY:
                flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
            flags &= ~os.O_APPEND
        return flags | os.O_CLOEXEC

    # --- inodes ----------------------------------------------------------------------------

    def lookup(self, parent: int, name: bytes, caller: tuple[int, int]) -> Entry:
        """Find ``name`` in ``parent`` (``.``/``..`` resolved inside the share) and count it.

        Under id maps the walk runs as the caller's host ids: reopening by /proc/self/fd
        later skips the path, so search permission on directories is checked here.
        """
        if self._confine:
            with self._creds.acting_as(*caller):
                return self._lookup(parent, name)
        return self._lookup(parent, name)

    def _as_caller(self, caller: tuple[int, int]) -> AbstractContextManager[None]:
        """A ``with`` block run as the caller's host ids under id maps (docs/credentials.md);
        without maps nothing is switched."""
        if not self._confine:
            return _UNCHANGED
        return self._creds.acting_as(*caller)

    def _lookup(self, parent: int, name: bytes) -> Entry:
        pinode = self.inodes.get(parent)
        if pinode.kind != stat.S_IFDIR:
            raise OSError(errno.ENOTDIR, "lookup in a non-directory")
        if name == b".":
            name_path = pinode.path
        elif name == b"..":
            name_path = pinode.path.rpartition(b"/")[0]
        else:
            if self._gated:
                self._check_visible(pinode, name)
            return self._lookup_child(pinode, name)
        if self._gated and name_path and self.allowlist.access(_share_path(name_path)) is DENIED:
            raise HiddenByAllowlist(errno.ENOENT, "hidden by the allowlist")
        return self._walk(name_path)

    def _walk(self, path: bytes) -> Entry:
        """Resolve a share-relative path component by component, never following symlinks."""
        root = self.inodes.root
        fd = os.dup(root.fd)
        parts = [p for p in path.split(b"/") if p]
        try:
            for part in parts:
                nfd = os.open(part, _O_PATH_FLAGS | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        return self.inodes.adopt(fd, st, path), st

    def forget(self, nodeid: int, nlookup: int) -> None:
        """The guest dropped ``nlookup`` references to ``nodeid``."""
        self.inodes.forget(nodeid, nlookup)

    def getattr(self, nodeid: int) -> os.stat_result:
        """Attributes of the inode itself (a symlink's own, never its target's)."""
        return os.fstat(self.inodes.get(nodeid).fd)

    def statx(self, nodeid: int) -> tuple[os.stat_result, tuple[int, int] | None]:
        """GETATTR's attributes and the birth time (None if the host keeps none), for STATX."""
        fd = self.inodes.get(nodeid).fd
        return os.fstat(fd), linux.birth_time(fd)

    def setattr(
        self,
        nodeid: int,
        valid: int,
        fh: int,
        size: int,
        atime_ns: int,
        mtime_ns: int,
        mode: int,
        uid: int,
        gid: int,
        caller: tuple[int, int],
    ) -> os.stat_result:
        """Change what ``valid`` selects, through the open file if the guest named one
        (which must be open on ``nodeid``). ``caller`` is the request's (uid, gid): under id
        maps the changes are made, and checked by the host, as its host ids."""
        inode = self.inodes.get(nodeid)
        if self._gated:
            self._check_changeable(inode)
        target: int | str = inode.proc_path
        if valid & FATTR_FH:
            target = self.handles.of(fh, nodeid).fd
        with self._as_caller(caller):
            self._setattr(inode, target, valid, size, atime_ns, mtime_ns, mode, uid, gid)
        return os.fstat(inode.fd)

    def _setattr(
        self,
        inode: Inode,
        target: int | str,
        valid: int,
        size: int,
        atime_ns: int,
        mtime_ns: int,
        mode: int,
        uid: int,
        gid: int,
    ) -> None:
        if valid & FATTR_MODE:
            os.chmod(target, stat.S_IMODE(mode))
        if valid & (FATTR_UID | FATTR_GID):
            uid = uid if valid & FATTR_UID else -1
            gid = gid if valid & FATTR_GID else -1
            if self._maps is not None:
                uid, gid = self._chown_ids(uid, gid)
            os.chown(target, uid, gid)
        if valid & FATTR_SIZE:
            if inode.kind != stat.S_IFREG:
                raise OSError(errno.EINVAL if inode.kind != stat.S_IFDIR else errno.EISDIR, "")
            os.truncate(target, size)
        if valid & (FATTR_ATIME | FATTR_MTIME):
            if valid & (FATTR_ATIME | FATTR_ATIME_NOW | FATTR_MTIME | FATTR_MTIME_NOW) == (
                FATTR_ATIME | FATTR_ATIME_NOW | FATTR_MTIME | FATTR_MTIME_NOW
            ):
                # touch: the kernel's "now" needs only write access, not ownership.
                os.utime(target)
                return
            old = os.fstat(inode.fd)
            now = None
            if valid & (FATTR_ATIME_NOW | FATTR_MTIME_NOW):
                now = time.time_ns()
            if valid & FATTR_ATIME:
                atime = now if valid & FATTR_ATIME_NOW and now is not None else atime_ns
            else:
                atime = old.st_atime_ns
            if valid & FATTR_MTIME:
                mtime = now if valid & FATTR_MTIME_NOW and now is not None else mtime_ns
            else:
                mtime = old.st_mtime_ns
            os.utime(target, ns=(atime, mtime))

    def _chown_ids(self, uid: int, gid: int) -> tuple[int, int]:
        """The host ids for a guest chown; EINVAL for an id outside the maps (as the kernel
        refuses a chown to an id not mapped into the caller's user namespace)."""
        assert self._maps is not None
        if uid != -1:
            host = self._maps.uid.to_host(uid)
            if host is None:
                raise OSError(errno.EINVAL, f"uid {uid} is not in the uid map")
            uid = host
        if gid != -1:
            host = self._maps.gid.to_host(gid)
            if host is None:
                raise OSError(errno.EINVAL, f"gid {gid} is not in the gid map")
            gid = host
        return uid, gid

    def readlink(self, nodeid: int) -> bytes:
        """The symlink's target, verbatim (the guest resolves it, not the host)."""
        inode = self.inodes.get(nodeid)
        if inode.kind != stat.S_IFLNK:
            raise OSError(errno.EINVAL, "not a symlink")
        return os.readlink(b"", dir_fd=inode.fd)

    def access(self, nodeid: int, mask: int, uid: int, gid: int) -> None:
        """Check ``mask`` (R_OK/W_OK/X_OK) for the caller against the mode bits.

        Under id maps the caller's guest ids become host ids; an unmapped one matches no
        owner and is not root (it can only get the "other" bits).
        """
        st = os.fstat(self.inodes.get(nodeid).fd)
        mask &= 7
        if not mask:
            return
        if self._maps is not None:
            host_uid = self._maps.uid.to_host(uid)
            host_gid = self._maps.gid.to_host(gid)
            uid = -1 if host_uid is None else host_uid
            gid = -1 if host_gid is None else host_gid
        mode = st.st_mode
        if uid == 0:
            if mask & os.X_OK and not stat.S_ISDIR(mode) and not mode & 0o111:
                raise OSError(errno.EACCES, "no execute bit")
            return
        if st.st_uid == uid:
            bits = (mode >> 6) & 7
        elif st.st_gid == gid:
            bits = (mode >> 3) & 7
        else:
            bits = mode & 7
        if mask & ~bits:
            raise OSError(errno.EACCES, "permission denied")

    def statfs(self, nodeid: int) -> os.statvfs_result:
        """Host filesystem statistics for the filesystem holding ``nodeid``."""
        return os.fstatvfs(self.inodes.get(nodeid).fd)

    # --- creating and removing names -------------------------------------------------------

    def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Entry:
        """Create a directory owned by the caller."""
        pinode = self.inodes.get(parent)
        if self._gated:
            self._check_writable(pinode, name)
        with self._creds.acting_as(uid, gid):
            os.mkdir(name, stat.S_IMODE(mode), dir_fd=pinode.fd)
        return self._lookup_child(pinode, name)

    def mknod(self, parent: int, name: bytes, mode: int, rdev: int, uid: int, gid: int) -> Entry:
        """Create a fifo, socket or empty file; device nodes are refused (EPERM)."""
        if stat.S_IFMT(mode) not in _MKNOD_KINDS:
            raise OSError(errno.EPERM, "device nodes cannot be created in the share")
        pinode = self.inodes.get(parent)
        if self._gated:
            self._check_writable(pinode, name)
        with self._creds.acting_as(uid, gid):
            os.mknod(name, mode, 0, dir_fd=pinode.fd)
        return self._lookup_child(pinode, name)

    def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> Entry:
        """Create a symlink; its target is stored verbatim and never followed on the host."""
        pinode = self.inodes.get(parent)
        if self._gated:
            self._check_writable(pinode, name)
        with self._creds.acting_as(uid, gid):
            os.symlink(target, name, dir_fd=pinode.fd)
        return self._lookup_child(pinode, name)

    def link(self, nodeid: int, newparent: int, newname: bytes, caller: tuple[int, int]) -> Entry:
        """A new hard link to ``nodeid`` (not to whatever a symlink points at)."""
        inode = self.inodes.get(nodeid)
        pinode = self.inodes.get(newparent)
        if self._gated:
            self._check_writable(pinode, newname)
        with self._as_caller(caller):
            os.link(inode.proc_path, newname, dst_dir_fd=pinode.fd, follow_symlinks=True)
        return self._lookup_child(pinode, newname)

    def unlink(self, parent: int, name: bytes, caller: tuple[int, int]) -> None:
        """Remove a non-directory name (as the caller's host ids under id maps)."""
        pinode = self.inodes.get(parent)
        if self._gated:
            self._check_writable(pinode, name)
        with self._as_caller(caller):
            os.unlink(name, dir_fd=pinode.fd)

    def rmdir(self, parent: int, name: bytes, caller: tuple[int, int]) -> None:
        """Remove an empty directory (as the caller's host ids under id maps)."""
        pinode = self.inodes.get(parent)
        if self._gated:
            self._check_writable(pinode, name)
        with self._as_caller(caller):
            os.rmdir(name, dir_fd=pinode.fd)

    def rename(
        self,
        parent: int,
        name: bytes,
        newparent: int,
        newname: bytes,
        flags: int,
        caller: tuple[int, int],
    ) -> None:
        """Rename (RENAME2 ``flags`` as renameat2) and keep the inode table's paths current."""
        pold = self.inodes.get(parent)
        pnew = self.inodes.get(newparent)
        if self._gated:
            self._check_writable(pold, name)
            self._check_writable(pnew, newname)
        st = os.stat(name, dir_fd=pold.fd, follow_symlinks=False)
        other = None
        if flags & RENAME_EXCHANGE:
            other = os.stat(newname, dir_fd=pnew.fd, follow_symlinks=False)
        with self._as_caller(caller):
            if flags:
                linux.renameat2(pold.fd, name, pnew.fd, newname, flags)
            else:
                os.rename(name, newname, src_dir_fd=pold.fd, dst_dir_fd=pnew.fd)
        old_path, new_path = pold.child_path(name), pnew.child_path(newname)
        moves = [((st.st_dev, st.st_ino), old_path, new_path, stat.S_ISDIR(st.st_mode))]
        if other is not None:
            moves.append(
                ((other.st_dev, other.st_ino), new_path, old_path, stat.S_ISDIR(other.st_mode))
            )
        self.inodes.moved(moves)

    # --- files -----------------------------------------------------------------------------

    def open(self, nodeid: int, flags: int, caller: tuple[int, int]) -> tuple[int, int]:
        """Open a regular file for I/O; returns ``(fh, FOPEN_* flags)``.

        Under id maps the host checks the open as the caller's host ids.
        """
        inode = self.inodes.get(nodeid)
        self._openable(inode, stat.S_IFREG)
        with self._as_caller(caller):
            fd = os.open(inode.proc_path, self._open_flags(flags))
        return self.handles.add(fd, nodeid), self.file_open_flags

    def create(
        self, parent: int, name: bytes, flags: int, mode: int, uid: int, gid: int
    ) -> tuple[Inode, os.stat_result, int, int]:
        """Create and open a regular file: ``(inode, attrs, fh, FOPEN_* flags)``.

        The exclusive create never follows a symlink planted at ``name``; if the name exists
        and the guest did not ask for O_EXCL, the existing file is opened like OPEN would
        (regular files only), so a host fifo at that name cannot block the daemon.
        """
        pinode = self.inodes.get(parent)
        if self._gated:
            self._check_writable(pinode, name)
        oflags = self._open_flags(flags & _CREATE_PASS_FLAGS)
        with self._creds.acting_as(uid, gid):
            try:
                fd = os.open(
                    name,
                    oflags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                    stat.S_IMODE(mode),
                    dir_fd=pinode.fd,
                )
            except FileExistsError:
                if flags & os.O_EXCL:
                    raise
                # Still as the caller: the guest kernel believed it was creating the file
                # and checked nothing, so the host must check this open.
                return self._open_existing(pinode, name, flags)
        try:
            pfd = os.open(f"/proc/self/fd/{fd}", os.O_PATH | os.O_CLOEXEC)
        except BaseException:
            os.close(fd)
            raise
        fh = self.handles.add(fd, 0)
        try:
            inode, st = self._adopt(pinode, name, pfd)
        except BaseException:
            self.handles.close(fh)
            raise
        self.handles.get(fh).nodeid = inode.nodeid
        return inode, st, fh, self.file_open_flags

    def _open_existing(
        self, pinode: Inode, name: bytes, flags: int
    ) -> tuple[Inode, os.stat_result, int, int]:
        """CREATE without O_EXCL of a name that exists: OPEN it (regular files only), with
        the attributes after the open (O_TRUNC)."""
        inode, _ = self._lookup_child(pinode, name)
        try:
            self._openable(inode, stat.S_IFREG)
            fd = os.open(inode.proc_path, self._open_flags(flags))
            try:
                st = os.fstat(fd)
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            self.inodes.forget(inode.nodeid, 1)
            raise
        return inode, st, self.handles.add(fd, inode.nodeid), self.file_open_flags

    def tmpfile(
        self, parent: int, flags: int, mode: int, uid: int, gid: int
    ) -> tuple[Inode, os.stat_result, int, int]:
        """An unnamed regular file in ``parent`` (``O_TMPFILE``), open: like :meth:`create`.

        The guest may give it a name later with ``linkat`` (LINK), unless it passed O_EXCL.
        Its inode path is the directory's until then: it has no name of its own.
        """
        pinode = self.inodes.get(parent)
        if self._gated and self.allowlist.access(pinode.share_path()) is not FULL:
            raise OSError(errno.EACCES, "not writable under the allowlist")
        # O_EXCL here means "never linkable"; _open_flags would drop it.
        oflags = self._open_flags(flags) | os.O_TMPFILE | (flags & os.O_EXCL)
        with self._creds.acting_as(uid, gid):
            fd = os.open(pinode.proc_path, oflags, stat.S_IMODE(mode))
        try:
            pfd = os.open(f"/proc/self/fd/{fd}", os.O_PATH | os.O_CLOEXEC)
        except BaseException:
            os.close(fd)
            raise
        fh = self.handles.add(fd, 0)
        try:
            st = os.fstat(pfd)
            inode = self.inodes.adopt(pfd, st, pinode.path)
        except BaseException:
            os.close(pfd)
            self.handles.close(fh)
            raise
        self.handles.get(fh).nodeid = inode.nodeid
        return inode, st, fh, self.file_open_flags

    def handle(self, fh: int, nodeid: int) -> Handle:
        """The handle ``fh`` open on ``nodeid`` (EBADF otherwise).

        Every fh-based op checks the pair: plugins and the allowlist judge the request's
        nodeid, so the handle acted on must be that inode's.
        """
        return self.handles.of(fh, nodeid)

    def read(self, nodeid: int, fh: int, offset: int, views: Sequence[memoryview]) -> int:
        """Read straight into the reply's memory (guest RAM on virtio): no copy in Python."""
        return os.preadv(self.handles.of(fh, nodeid).fd, views, offset) if views else 0

    def write(self, nodeid: int, fh: int, offset: int, views: Sequence[memoryview]) -> int:
        """Write straight from the request's memory; returns the bytes written."""
        return os.pwritev(self.handles.of(fh, nodeid).fd, views, offset) if views else 0

    def flush(self, nodeid: int, fh: int, lock_owner: int = 0) -> None:
        """A guest process closed an fd: POSIX semantics drop its locks on the file.

        Otherwise free of syscalls on purpose (two FLUSHes per ``close`` of a dup'd fd), and
        one truth test when no lock was ever taken.
        """
        handle = self.handles.of(fh, nodeid)
        if self.locks:
            self.locks.drop_owner(handle.nodeid, lock_owner)

    def release(self, nodeid: int, fh: int) -> None:
        """The guest closed its last reference to ``fh`` (closing the fd drops its flock)."""
        self.handles.of(fh, nodeid)
        if self.locks:
            self.handles.close(fh)
            # No guest process can hold a POSIX lock on a file it no longer has open.
            if self.locks.has_inode(nodeid) and not self.handles.has_nodeid(nodeid):
                self.locks.drop_inode(nodeid)
            return
        self.handles.close(fh)

    # --- locks -----------------------------------------------------------------------------

    def getlk(
        self, nodeid: int, fh: int, owner: int, start: int, end: int, kind: int
    ) -> tuple[int, int, int, int]:
        """GETLK: the lock that would conflict (start, end, type, guest pid), or F_UNLCK."""
        handle = self.handles.of(fh, nodeid)
        return self.locks.getlk(handle.nodeid, owner, handle.fd, start, end, kind)

    def setlk(
        self,
        nodeid: int,
        fh: int,
        owner: int,
        start: int,
        end: int,
        kind: int,
        pid: int,
        flock: bool,
        wait: Deferred | None = None,
    ) -> bool:
        """SETLK/SETLKW: True when done; False when ``wait`` will be finished later."""
        handle = self.handles.of(fh, nodeid)
        if flock:
            return self.locks.flock(handle.fd, kind, wait)  # (early INTERRUPTs: POSIX only)
        return self.locks.setlk(handle.nodeid, owner, handle.fd, start, end, kind, pid, wait)

    def fsync(self, nodeid: int, fh: int, datasync: bool) -> None:
        """Flush file data (and metadata unless ``datasync``) to the host disk."""
        fd = self.handles.of(fh, nodeid).fd
        if datasync:
            os.fdatasync(fd)
        else:
            os.fsync(fd)

    def fallocate(self, nodeid: int, fh: int, mode: int, offset: int, length: int) -> None:
        """Reserve or punch space (``fallocate(2)``)."""
        fd = self.handles.of(fh, nodeid).fd
        if mode == 0:
            os.posix_fallocate(fd, offset, length)
        else:
            linux.fallocate(fd, mode, offset, length)

    def lseek(self, nodeid: int, fh: int, offset: int, whence: int) -> int:
        """SEEK_DATA/SEEK_HOLE (the kernel answers SEEK_SET/CUR/END itself)."""
        return os.lseek(self.handles.of(fh, nodeid).fd, offset, whence)

    def copy_file_range(
        self,
        nodeid_in: int,
        fh_in: int,
        off_in: int,
        nodeid_out: int,
        fh_out: int,
        off_out: int,
        length: int,
    ) -> int:
        """Copy between two open files on the host without moving data through the guest."""
        src = self.handles.of(fh_in, nodeid_in).fd
        dst = self.handles.of(fh_out, nodeid_out).fd
        return os.copy_file_range(src, dst, length, off_in, off_out)

    def syncfs(self, nodeid: int) -> None:
        """A guest ``sync``: flush the host filesystem that holds the share."""
        self.inodes.get(nodeid)
        linux.syncfs(self._root_dirfd)

    # --- directories -----------------------------------------------------------------------

    def opendir(self, nodeid: int, caller: tuple[int, int]) -> tuple[int, int]:
        """Open a directory for listing; returns ``(fh, FOPEN_* flags)``.

        Under id maps the host checks the open as the caller's host ids.
        """
        inode = self.inodes.get(nodeid)
        self._openable(inode, stat.S_IFDIR)
        with self._as_caller(caller):
            fd = os.open(inode.proc_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return self.handles.add(fd, nodeid), self.dir_open_flags

    def readdir(self, nodeid: int, fh: int, offset: int) -> list[DirEntry | None]:
        """The directory's listing; entry ``i`` has cookie ``i + 1``, ``None`` is skipped.

        Offset 0 (first call, or rewinddir) takes a fresh snapshot; later offsets index the
        snapshot, so no entry is skipped or repeated while the guest pages through it. Names
        the allowlist revoked since the snapshot become ``None`` (keeping every cookie).
        """
        handle = self.handles.of(fh, nodeid)
        entries = handle.entries
        if offset == 0 or entries is None:
            entries = handle.entries = self._list(handle)
            handle.generation = self.allowlist.generation
        elif self._gated and handle.generation != self.allowlist.generation:
            handle.generation = self.allowlist.generation
            self._refilter(handle, entries)
        return entries

    def _refilter(self, handle: Handle, entries: list[DirEntry | None]) -> None:
        """Hide listed names that the allowlist no longer shows (a revoke mid-listing)."""
        visible = self.allowlist.visible_children(self.inodes.get(handle.nodeid).share_path())
        if visible is None:
            return
        for index in range(2, len(entries)):
            entry = entries[index]
            if entry is not None and os.fsdecode(entry[0]) not in visible:
                entries[index] = None

    def _list(self, handle: Handle) -> list[DirEntry | None]:
        inode = self.inodes.get(handle.nodeid)
        own_ino = inode.key[1]
        if inode is self.inodes.root:
            parent_ino = own_ino
        else:
            try:
                parent_ino = os.stat(b"..", dir_fd=inode.fd, follow_symlinks=False).st_ino
            except OSError:
                parent_ino = own_ino
        entries: list[DirEntry | None] = [(b".", own_ino, DT_DIR), (b"..", parent_ino, DT_DIR)]
        # The whole directory is read into the snapshot, so hidden entries never make a
        # batch look like the end of the directory (crosvm filters one getdents batch).
        visible = self.allowlist.visible_children(inode.share_path()) if self._gated else None
        with os.scandir(handle.fd) as it:
            for entry in it:
                if visible is not None and entry.name not in visible:
                    continue
                if entry.is_symlink():
                    dtype = DT_LNK
                elif entry.is_dir(follow_symlinks=False):
                    dtype = DT_DIR
                elif entry.is_file(follow_symlinks=False):
                    dtype = DT_REG
                else:
                    try:
                        dtype = stat.S_IFMT(entry.stat(follow_symlinks=False).st_mode) >> 12
                    except OSError:
                        dtype = DT_UNKNOWN
                entries.append((os.fsencode(entry.name), entry.inode(), dtype))
        return entries

    def lookup_entry(self, parent: int, name: bytes, caller: tuple[int, int]) -> Entry:
        """LOOKUP for READDIRPLUS: the same as :meth:`lookup` for a listed name."""
        pinode = self.inodes.get(parent)
        if self._gated:
            self._check_visible(pinode, name)
        if self._confine:
            with self._creds.acting_as(*caller):
                return self._lookup_child(pinode, name)
        return self._lookup_child(pinode, name)

    def releasedir(self, nodeid: int, fh: int) -> None:
        """The guest closed the directory."""
        self.handles.of(fh, nodeid)
        self.handles.close(fh)

    def fsyncdir(self, nodeid: int, fh: int, datasync: bool) -> None:
        """Flush a directory's entries to disk."""
        self.fsync(nodeid, fh, datasync)

    # --- extended attributes (fsd/fs/xattrs.py) --------------------------------------------

    def _xattr_change(self, inode: Inode, name: bytes, caller: tuple[int, int]) -> bool:
        """Gate SETXATTR/REMOVEXATTR and, under id maps, switch to the caller (True if so).

        The host refuses ``trusted.*`` and ``security.*`` by capabilities that setfsuid does
        not drop (CAP_SYS_ADMIN, CAP_SETFCAP), so they are refused here for a caller whose
        host uid is not root: a file capability set by a mapped guest root would hold on the
        host.
        """
        if self._gated:
            self._check_changeable(inode)
        if not self._confine:
            return False
        privileged = name.startswith((b"trusted.", b"security."))
        if privileged and self._creds.host_uid(caller[0]) != 0:
            raise OSError(errno.EPERM, "privileged xattr namespace")
        return self._creds.switch(*caller)

    def getxattr(self, nodeid: int, name: bytes) -> bytes:
        """The value of xattr ``name`` (ENODATA if unset); the server does the size probe."""
        inode = self.inodes.get(nodeid)
        rewrite = self.options.rewrite_security_xattrs
        return xattrs.getxattr(inode, xattrs.host_name(name, rewrite=rewrite))

    def listxattr(self, nodeid: int) -> list[bytes]:
        """The inode's xattr names as the guest sees them."""
        names = xattrs.listxattr(self.inodes.get(nodeid))
        return xattrs.guest_names(names, rewrite=self.options.rewrite_security_xattrs)

    def setxattr(
        self, nodeid: int, name: bytes, value: bytes, flags: int, caller: tuple[int, int]
    ) -> None:
        """Set xattr ``name`` (``flags``: XATTR_CREATE / XATTR_REPLACE)."""
        inode = self.inodes.get(nodeid)
        host = xattrs.host_name(name, rewrite=self.options.rewrite_security_xattrs, setting=True)
        switched = self._xattr_change(inode, host, caller)
        try:
            xattrs.setxattr(inode, host, value, flags)
        finally:
            if switched:
                self._creds.restore()

    def removexattr(self, nodeid: int, name: bytes, caller: tuple[int, int]) -> None:
        """Remove xattr ``name`` (ENODATA if unset)."""
        inode = self.inodes.get(nodeid)
        host = xattrs.host_name(name, rewrite=self.options.rewrite_security_xattrs)
        switched = self._xattr_change(inode, host, caller)
        try:
            xattrs.removexattr(inode, host)
        finally:
            if switched:
                self._creds.restore()

    def kill_suidgid(self, nodeid: int, fh: int | None = None) -> None:
        """HANDLE_KILLPRIV_V2: drop set-id bits the guest says a write/truncate must drop."""
        if fh is not None:
            xattrs.kill_suidgid(self.handles.of(fh, nodeid).fd)
            return
        inode = self.inodes.get(nodeid)
        if inode.kind == stat.S_IFREG:
            xattrs.kill_suidgid(inode.proc_path)

    # --- session ---------------------------------------------------------------------------

    def destroy(self) -> None:
        """Drop every handle and every inode but the root (the guest unmounted)."""
        self.locks.clear()
        self.handles.clear()
        self.inodes.clear()


def _share_path(path: bytes) -> tuple[str, ...]:
    """A share-relative bytes path as the allowlist's name tuple."""
    return tuple(os.fsdecode(path).split("/")) if path else ()
