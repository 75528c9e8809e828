"""SETATTR: apply the attribute changes the guest asked for to one host inode."""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable

from fsd.fs import procfd
from fsd.fuse.abi import (
    FATTR_ATIME,
    FATTR_ATIME_NOW,
    FATTR_GID,
    FATTR_MODE,
    FATTR_MTIME,
    FATTR_MTIME_NOW,
    FATTR_SIZE,
    FATTR_UID,
)
from fsd.fuse.filesystem import SetattrArgs

__all__ = ["apply_setattr"]

_TOUCH = FATTR_ATIME | FATTR_ATIME_NOW | FATTR_MTIME | FATTR_MTIME_NOW

HostIds = Callable[[int, int], tuple[int, int]]
"""Guest (uid, gid) of a chown → host ids (-1 kept: "unchanged"; see Credentials.chown_ids)."""


def apply_setattr(
    fd: int, opened: bool, kind: int, attrs: SetattrArgs,
    current: Callable[[], os.stat_result], host_ids: HostIds,
) -> None:  # fmt: skip
    """Change what ``attrs.valid`` selects on the file ``fd`` refers to, of type ``kind``, in
    the order the kernel applies them: through the open file when ``opened`` (the guest named
    one), else through the inode's O_PATH fd (:mod:`fsd.fs.procfd`). ``current`` stats the
    inode (for a time the guest leaves unchanged); ``host_ids`` translates chown ids."""
    valid = attrs.valid
    if valid & FATTR_MODE:
        if opened:
            os.fchmod(fd, stat.S_IMODE(attrs.mode))
        else:
            procfd.chmod(fd, stat.S_IMODE(attrs.mode))
    if valid & (FATTR_UID | FATTR_GID):
        uid = attrs.uid if valid & FATTR_UID else -1
        gid = attrs.gid if valid & FATTR_GID else -1
        uid, gid = host_ids(uid, gid)
        if opened:
            os.fchown(fd, uid, gid)
        else:
            procfd.chown(fd, uid, gid)
    if valid & FATTR_SIZE:
        if kind != stat.S_IFREG:
            raise OSError(errno.EINVAL if kind != stat.S_IFDIR else errno.EISDIR, "")
        if opened:
            os.ftruncate(fd, attrs.size)
        else:
            procfd.truncate(fd, attrs.size)
    if valid & (FATTR_ATIME | FATTR_MTIME):
        times: tuple[int, int] | None = None
        if valid & _TOUCH != _TOUCH:
            now = time.time_ns() if valid & (FATTR_ATIME_NOW | FATTR_MTIME_NOW) else 0
            old = current()
            if valid & FATTR_ATIME:
                atime = now if valid & FATTR_ATIME_NOW else attrs.atime_ns
            else:
                atime = old.st_atime_ns
            if valid & FATTR_MTIME:
                mtime = now if valid & FATTR_MTIME_NOW else attrs.mtime_ns
            else:
                mtime = old.st_mtime_ns
            times = (atime, mtime)
        # None: touch; the kernel's "now" needs only write access, not ownership.
        if opened:
            if times is None:
                os.utime(fd)
            else:
                os.utime(fd, ns=times)
        else:
            procfd.utime(fd, times)
