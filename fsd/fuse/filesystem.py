"""The filesystem contract the FUSE server is written against, and the caller's context.

The server decodes requests and encodes replies; a :class:`Filesystem` does the work. This is
the shape of crosvm's ``fuse::filesystem::FileSystem`` trait and virtiofsd's: every operation
takes the :class:`Context` of the request first (who asks), then the request's own arguments,
and raises ``OSError`` to answer with an errno. The passthrough in ``fsd.fs`` implements it;
tests may implement a small one. Nothing here knows how a filesystem stores its inodes.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

from fsd.fuse.abi import InitFlag

if TYPE_CHECKING:
    from fsd.fuse.deferred import Deferred

__all__ = [
    "Context",
    "DirEntry",
    "Entry",
    "Filesystem",
    "FilesystemConfig",
    "LockRange",
    "Opened",
    "SetattrArgs",
]


class Context:
    """Who sent a request, taken once from its header (virtiofsd's ``Context::from``).

    ``uid``/``gid`` are the caller's ids as the client sees them (a guest's, before any id
    map), ``pid`` its process (0 for the kernel's own requests), ``unique`` the request's id.
    ``supp_gid``: for a request that creates a name, the one supplementary group of the
    caller the client sent (CREATE_SUPP_GROUP: the parent directory's group, when the
    caller is in it by a supplementary group only), else None.
    """

    __slots__ = ("gid", "pid", "uid", "unique")

    uid: int
    gid: int
    pid: int
    unique: int
    #: A class default: only the requests that carry the group have a slot for it.
    supp_gid: int | None = None

    def __repr__(self) -> str:
        return f"Context(uid={self.uid}, gid={self.gid}, pid={self.pid}, unique={self.unique})"


Entry = tuple[int, os.stat_result]
"""A looked-up name: its nodeid (the lookup already counted) and its attributes."""

Opened = tuple[int, int]
"""An open file or directory: its handle (``fh``) and the ``FOPEN_*`` flags for the client."""

DirEntry = tuple[bytes, int, int]
"""One directory entry: name, inode number, ``DT_*`` type."""

LockRange = tuple[int, int, int, int]
"""A lock as GETLK answers it: start, end (inclusive), ``F_*LCK`` type, owner's pid."""


class SetattrArgs(NamedTuple):
    """SETATTR's decoded arguments: ``valid`` (``FATTR_*``) says which of the others apply."""

    valid: int
    fh: int
    size: int
    atime_ns: int
    mtime_ns: int
    mode: int
    uid: int
    gid: int


class FilesystemConfig(NamedTuple):
    """What a filesystem wants the client told: cache lifetimes, extra INIT capabilities,
    how host owners appear to it (``None``: unchanged), and whether mount points inside it
    are announced."""

    entry_timeout: float = 5.0
    attr_timeout: float = 5.0
    #: > 0 lets the client cache failed lookups (a nodeid-0 entry) this long.
    negative_timeout: float = 0.0
    #: Capabilities granted if the client offers them, beside the server's own.
    init_flags: int = int(InitFlag.HANDLE_KILLPRIV_V2)
    #: The server's own capabilities not to grant (READDIRPLUS with --no-readdirplus).
    withheld_init_flags: int = 0
    #: Host uid → client uid and host gid → client gid, for every attribute reply.
    owner_to_client: tuple[Callable[[int], int], Callable[[int], int]] | None = None
    #: Mount points inside the share appear as their own mounts in the client (virtiofsd's
    #: --announce-submounts). The filesystem then also asks for INIT's SUBMOUNTS in
    #: ``init_flags``; the server, when SUBMOUNTS was granted, sets ``ATTR_SUBMOUNT`` in the
    #: ``fuse_attr.flags`` of every entry it sends (LOOKUP, READDIRPLUS; MKDIR, CREATE and
    #: the rest never make one) whose nodeid :meth:`Filesystem.is_submount` says is one.
    announce_submounts: bool = False


class Filesystem(Protocol):
    """The operations a FUSE server needs; each raises ``OSError`` to answer an errno.

    Like crosvm's trait, every operation has a default: ENOSYS (the client stops asking
    for some, e.g. xattrs), so a class that subclasses this one explicitly implements only
    what it serves. The passthrough implements all of them.

    A lookup-returning operation (LOOKUP, MKDIR, MKNOD, SYMLINK, LINK, CREATE, TMPFILE)
    counts one lookup of the returned nodeid, which the client later drops with FORGET.
    Handles are checked against the nodeid they were opened on.

    Threads: the server runs operations one at a time, except :meth:`read`, :meth:`write`,
    :meth:`kill_suidgid` with a handle, :meth:`fsync`, :meth:`fallocate`, :meth:`lseek` and
    :meth:`copy_file_range` (``fsd.fuse.server.CONCURRENT``), which may run on several
    threads at once, beside any other operation: they must keep the handles they use open
    (a RELEASE meanwhile closes it after them). :meth:`setlk` may finish ``wait`` later
    from another thread.
    """

    config: FilesystemConfig = FilesystemConfig()

    # --- session ---------------------------------------------------------------------------

    def destroy(self) -> None:
        """The session ended: drop every lookup and handle the client held."""
        return None  # noqa: RET501 (a body of its own: mypy counts a bare docstring abstract)

    def path(self, nodeid: int) -> bytes | None:
        """``nodeid``'s path below the root (``b""`` is the root), for plugins and logs;
        ``None`` for a nodeid the client does not hold."""
        return None

    def is_submount(self, nodeid: int) -> bool:
        """Whether the entry ``nodeid`` (just returned by a lookup) is a mount point to
        announce (``config.announce_submounts``): a directory on another filesystem than its
        parent's."""
        return False

    # --- inodes ----------------------------------------------------------------------------

    def lookup(self, ctx: Context, parent: int, name: bytes) -> Entry:
        """Find ``name`` in directory ``parent`` (``.`` and ``..`` included)."""
        raise OSError(errno.ENOSYS, "not implemented")

    def forget(self, ctx: Context, nodeid: int, nlookup: int) -> None:
        """The client dropped ``nlookup`` lookups of ``nodeid``."""
        return None  # noqa: RET501 (as for destroy)

    def getattr(self, ctx: Context, nodeid: int) -> os.stat_result:
        """The inode's attributes (a symlink's own)."""
        raise OSError(errno.ENOSYS, "not implemented")

    def statx(self, ctx: Context, nodeid: int) -> tuple[os.stat_result, tuple[int, int] | None]:
        """GETATTR's attributes and the birth time as (seconds, nanoseconds), if known."""
        raise OSError(errno.ENOSYS, "not implemented")

    def setattr(self, ctx: Context, nodeid: int, attrs: SetattrArgs) -> os.stat_result:
        """Change what ``attrs.valid`` selects; the attributes after the change."""
        raise OSError(errno.ENOSYS, "not implemented")

    def readlink(self, ctx: Context, nodeid: int) -> bytes:
        """A symlink's target, verbatim."""
        raise OSError(errno.ENOSYS, "not implemented")

    def access(self, ctx: Context, nodeid: int, mask: int) -> None:
        """Raise EACCES unless the caller may ``mask`` (R_OK/W_OK/X_OK) the inode."""
        raise OSError(errno.ENOSYS, "not implemented")

    def statfs(self, ctx: Context, nodeid: int) -> os.statvfs_result:
        """Statistics of the filesystem holding ``nodeid``."""
        raise OSError(errno.ENOSYS, "not implemented")

    # --- names -----------------------------------------------------------------------------

    def mkdir(self, ctx: Context, parent: int, name: bytes, mode: int, umask: int) -> Entry:
        """Create a directory owned by the caller.

        ``umask`` (here and in MKNOD, CREATE, TMPFILE) is the caller's: the client has already
        applied it to ``mode`` unless the filesystem asked for DONT_MASK (POSIX ACLs, where a
        parent's default ACL replaces it).
        """
        raise OSError(errno.ENOSYS, "not implemented")

    def mknod(
        self, ctx: Context, parent: int, name: bytes, mode: int, rdev: int, umask: int
    ) -> Entry:
        """Create a special or empty regular file owned by the caller; ``rdev`` is the
        host's ``dev_t`` (the server decodes the wire's format)."""
        raise OSError(errno.ENOSYS, "not implemented")

    def symlink(self, ctx: Context, parent: int, name: bytes, target: bytes) -> Entry:
        """Create a symlink holding ``target`` verbatim."""
        raise OSError(errno.ENOSYS, "not implemented")

    def link(self, ctx: Context, nodeid: int, newparent: int, newname: bytes) -> Entry:
        """A new hard link to ``nodeid``."""
        raise OSError(errno.ENOSYS, "not implemented")

    def unlink(self, ctx: Context, parent: int, name: bytes) -> None:
        """Remove a non-directory."""
        raise OSError(errno.ENOSYS, "not implemented")

    def rmdir(self, ctx: Context, parent: int, name: bytes) -> None:
        """Remove an empty directory."""
        raise OSError(errno.ENOSYS, "not implemented")

    def rename(
        self, ctx: Context, parent: int, name: bytes, newparent: int, newname: bytes, flags: int
    ) -> None:
        """Rename; ``flags`` are ``renameat2``'s (NOREPLACE, EXCHANGE, WHITEOUT)."""
        raise OSError(errno.ENOSYS, "not implemented")

    # --- files -----------------------------------------------------------------------------

    def open(self, ctx: Context, nodeid: int, flags: int) -> Opened:
        """Open a regular file with ``open(2)`` flags."""
        raise OSError(errno.ENOSYS, "not implemented")

    def create(
        self, ctx: Context, parent: int, name: bytes, flags: int, mode: int, umask: int
    ) -> tuple[Entry, Opened]:
        """Create and open a regular file (or open the existing one without O_EXCL)."""
        raise OSError(errno.ENOSYS, "not implemented")

    def tmpfile(
        self, ctx: Context, parent: int, flags: int, mode: int, umask: int
    ) -> tuple[Entry, Opened]:
        """An unnamed regular file in ``parent``, open (``O_TMPFILE``)."""
        raise OSError(errno.ENOSYS, "not implemented")

    def read(
        self, ctx: Context, nodeid: int, fh: int, offset: int, into: Sequence[memoryview]
    ) -> int:
        """Read into ``into`` (the reply's memory) at ``offset``; bytes read."""
        raise OSError(errno.ENOSYS, "not implemented")

    def write(
        self, ctx: Context, nodeid: int, fh: int, offset: int, data: Sequence[memoryview]
    ) -> int:
        """Write ``data`` (the request's memory) at ``offset``; bytes written."""
        raise OSError(errno.ENOSYS, "not implemented")

    def kill_suidgid(self, ctx: Context, nodeid: int, fh: int | None) -> None:
        """Drop set-user/group-id bits, as a write or truncate by the caller must."""
        raise OSError(errno.ENOSYS, "not implemented")

    def flush(self, ctx: Context, nodeid: int, fh: int, lock_owner: int) -> None:
        """A client process closed a descriptor of ``fh``."""
        raise OSError(errno.ENOSYS, "not implemented")

    def release(self, ctx: Context, nodeid: int, fh: int) -> None:
        """The client's last reference to ``fh`` is gone."""
        raise OSError(errno.ENOSYS, "not implemented")

    def fsync(self, ctx: Context, nodeid: int, fh: int, datasync: bool) -> None:
        """Flush the file to stable storage (data only if ``datasync``)."""
        raise OSError(errno.ENOSYS, "not implemented")

    def fallocate(
        self, ctx: Context, nodeid: int, fh: int, mode: int, offset: int, length: int
    ) -> None:
        """``fallocate(2)``."""
        raise OSError(errno.ENOSYS, "not implemented")

    def lseek(self, ctx: Context, nodeid: int, fh: int, offset: int, whence: int) -> int:
        """SEEK_DATA/SEEK_HOLE; the resulting offset."""
        raise OSError(errno.ENOSYS, "not implemented")

    def copy_file_range(
        self,
        ctx: Context,
        nodeid_in: int,
        fh_in: int,
        off_in: int,
        nodeid_out: int,
        fh_out: int,
        off_out: int,
        length: int,
    ) -> int:
        """Copy between two open files; bytes copied."""
        raise OSError(errno.ENOSYS, "not implemented")

    def syncfs(self, ctx: Context, nodeid: int) -> None:
        """Flush the whole filesystem."""
        raise OSError(errno.ENOSYS, "not implemented")

    # --- locks -----------------------------------------------------------------------------

    def getlk(
        self, ctx: Context, nodeid: int, fh: int, owner: int, start: int, end: int, kind: int
    ) -> LockRange:
        """The lock that would conflict with this one, or ``F_UNLCK``."""
        raise OSError(errno.ENOSYS, "not implemented")

    def setlk(
        self,
        ctx: Context,
        nodeid: int,
        fh: int,
        owner: int,
        start: int,
        end: int,
        kind: int,
        pid: int,
        flock: bool,
        wait: Deferred | None,
    ) -> bool:
        """Take or release a lock (``pid``: the locking process, for GETLK answers). True
        when done; False when ``wait`` (SETLKW) will be finished later, from another thread."""
        raise OSError(errno.ENOSYS, "not implemented")

    def interrupt(self, ctx: Context, unique: int) -> None:
        """The client gave up on request ``unique`` (only a waiting lock can stop)."""
        raise OSError(errno.ENOSYS, "not implemented")

    # --- directories -----------------------------------------------------------------------

    def opendir(self, ctx: Context, nodeid: int) -> Opened:
        """Open a directory for listing."""
        raise OSError(errno.ENOSYS, "not implemented")

    def readdir(self, ctx: Context, nodeid: int, fh: int, offset: int) -> Sequence[DirEntry | None]:
        """The listing; entry ``i`` has cookie ``i + 1``; ``None`` entries are skipped (hidden
        since the listing was taken, keeping every later cookie)."""
        raise OSError(errno.ENOSYS, "not implemented")

    def releasedir(self, ctx: Context, nodeid: int, fh: int) -> None:
        """The client closed the directory."""
        raise OSError(errno.ENOSYS, "not implemented")

    def fsyncdir(self, ctx: Context, nodeid: int, fh: int, datasync: bool) -> None:
        """Flush a directory's entries."""
        raise OSError(errno.ENOSYS, "not implemented")

    # --- extended attributes ---------------------------------------------------------------

    def getxattr(self, ctx: Context, nodeid: int, name: bytes) -> bytes:
        """An xattr's value (ENODATA if unset)."""
        raise OSError(errno.ENOSYS, "not implemented")

    def listxattr(self, ctx: Context, nodeid: int) -> list[bytes]:
        """The xattr names the client may see."""
        raise OSError(errno.ENOSYS, "not implemented")

    def setxattr(
        self, ctx: Context, nodeid: int, name: bytes, value: bytes, flags: int, kill_sgid: bool
    ) -> None:
        """Set an xattr (``flags``: XATTR_CREATE / XATTR_REPLACE). ``kill_sgid``: the client
        says the caller may not keep the set-group-ID bit of a file whose access ACL it sets
        (SETXATTR_ACL_KILL_SGID)."""
        raise OSError(errno.ENOSYS, "not implemented")

    def removexattr(self, ctx: Context, nodeid: int, name: bytes) -> None:
        """Remove an xattr (ENODATA if unset)."""
        raise OSError(errno.ENOSYS, "not implemented")
