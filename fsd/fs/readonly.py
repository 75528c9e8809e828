"""``--readonly``: the share as a read-only filesystem, every change refused with EROFS.

One place decides what a read-only share may do: :class:`ReadOnlyPassthroughFs` overrides
each operation that could change the host directory, and nothing else. ``PassthroughFs(root,
FsOptions(readonly=True))`` builds one (see ``PassthroughFs.__new__``), so every caller that
makes a passthrough gets the guarantee without knowing about it. The guest's mount itself
stays read-write (the device cannot say otherwise); it sees EROFS, as on an ``ro`` mount.
As in virtiofsd, access times may still change on the host (reads are real reads).

| operation | read-only answer |
|---|---|
| MKDIR, MKNOD, SYMLINK, LINK, UNLINK, RMDIR, RENAME(2), TMPFILE | EROFS |
| SETATTR (chmod, chown, truncate, utimes), SETXATTR, REMOVEXATTR | EROFS |
| WRITE, FALLOCATE, COPY_FILE_RANGE (a handle could only be read-only anyway) | EROFS |
| OPEN with write access or O_TRUNC | EROFS |
| CREATE: a missing name EROFS; an existing one with O_EXCL EEXIST; else OPEN's rules | |
| ACCESS with W_OK | EROFS |
| the killing of set-id bits after a write or truncate | EROFS |
| LOOKUP, GETATTR, READ, READDIR, XATTR reads, locks, FSYNC, SYNCFS, STATFS, ... | unchanged |

The order matches Linux on an ``ro`` mount for CREATE (EEXIST before EROFS for an existing
name with O_EXCL, an existing name opens); for the others EROFS comes first, as in virtiofsd,
whatever else might be wrong with the request.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from typing import Final, NoReturn

from fsd.fs.passthrough import PassthroughFs
from fsd.fuse.filesystem import Context, Entry, Opened, SetattrArgs

__all__ = ["ALLOWED", "REFUSED", "ReadOnlyPassthroughFs"]

#: Filesystem operations a read-only share serves as usual.
ALLOWED: Final = frozenset(
    {
        "destroy", "path", "is_submount", "lookup", "forget", "getattr", "statx", "readlink",
        "statfs", "read", "flush", "release", "fsync", "lseek", "syncfs", "getlk", "setlk",
        "interrupt", "opendir", "readdir", "releasedir", "fsyncdir", "getxattr", "listxattr",
    }
)  # fmt: skip
#: Filesystem operations a read-only share refuses outright, or checks (open, create, access).
REFUSED: Final = frozenset(
    {
        "setattr", "mkdir", "mknod", "symlink", "link", "unlink", "rmdir", "rename", "open",
        "create", "tmpfile", "write", "kill_suidgid", "fallocate", "copy_file_range",
        "setxattr", "removexattr", "access",
    }
)  # fmt: skip


def _erofs() -> NoReturn:
    raise OSError(errno.EROFS, "the share is read-only")


def _check_read_only_open(flags: int) -> None:
    """OPEN/CREATE flags a read-only share can honour: read access, no truncation."""
    if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
        _erofs()


class ReadOnlyPassthroughFs(PassthroughFs):
    """A :class:`PassthroughFs` that refuses every change (see the module docstring)."""

    __slots__ = ()

    def setattr(self, ctx: Context, nodeid: int, attrs: SetattrArgs) -> os.stat_result:
        _erofs()

    def mkdir(self, ctx: Context, parent: int, name: bytes, mode: int, umask: int) -> Entry:
        _erofs()

    def mknod(
        self, ctx: Context, parent: int, name: bytes, mode: int, rdev: int, umask: int
    ) -> Entry:
        _erofs()

    def symlink(self, ctx: Context, parent: int, name: bytes, target: bytes) -> Entry:
        _erofs()

    def link(self, ctx: Context, nodeid: int, newparent: int, newname: bytes) -> Entry:
        _erofs()

    def unlink(self, ctx: Context, parent: int, name: bytes) -> None:
        _erofs()

    def rmdir(self, ctx: Context, parent: int, name: bytes) -> None:
        _erofs()

    def rename(
        self, ctx: Context, parent: int, name: bytes, newparent: int, newname: bytes, flags: int
    ) -> None:
        _erofs()

    def open(self, ctx: Context, nodeid: int, flags: int) -> Opened:
        _check_read_only_open(flags)
        return super().open(ctx, nodeid, flags)

    def create(
        self, ctx: Context, parent: int, name: bytes, flags: int, mode: int, umask: int
    ) -> tuple[Entry, Opened]:
        """Open ``name`` if it exists (read-only, as OPEN); nothing is ever created."""
        pinode = self.inodes.get(parent)
        try:
            self.gate.visible(pinode, name)
            os.stat(name, dir_fd=pinode.fd, follow_symlinks=False)
        except FileNotFoundError:  # a name the allowlist hides does not exist either
            _erofs()
        if flags & os.O_EXCL:
            raise OSError(errno.EEXIST, "exists")
        _check_read_only_open(flags)
        with self._creds.acting_as(ctx.uid, ctx.gid):
            return self._open_existing(pinode, name, flags)

    def tmpfile(
        self, ctx: Context, parent: int, flags: int, mode: int, umask: int
    ) -> tuple[Entry, Opened]:
        _erofs()

    def write(
        self, ctx: Context, nodeid: int, fh: int, offset: int, data: Sequence[memoryview]
    ) -> int:
        _erofs()

    def kill_suidgid(self, ctx: Context, nodeid: int, fh: int | None) -> None:
        _erofs()

    def fallocate(
        self, ctx: Context, nodeid: int, fh: int, mode: int, offset: int, length: int
    ) -> None:
        _erofs()

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
        _erofs()

    def setxattr(
        self, ctx: Context, nodeid: int, name: bytes, value: bytes, flags: int, kill_sgid: bool
    ) -> None:
        _erofs()

    def removexattr(self, ctx: Context, nodeid: int, name: bytes) -> None:
        _erofs()

    def access(self, ctx: Context, nodeid: int, mask: int) -> None:
        if mask & os.W_OK:
            _erofs()
        super().access(ctx, nodeid, mask)
