"""The ACCESS check: may a caller read, write or execute an inode, by its mode bits."""

from __future__ import annotations

import errno
import os
import stat

__all__ = ["check_access"]


def check_access(st: os.stat_result, mask: int, uid: int, gid: int) -> None:
    """Raise EACCES unless ``uid``/``gid`` (host ids; -1 for an id with no host id, which
    matches no owner and is not root) may ``mask`` (R_OK/W_OK/X_OK) the inode ``st``.

    Root may do anything but execute a file with no execute bit, as the kernel decides.
    """
    mask &= 7
    if not mask:
        return
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
