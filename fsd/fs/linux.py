"""Linux calls the ``os`` module lacks (renameat2, fallocate modes, syncfs, statx, unshare),
via libc.

They are rare (RENAME2 with flags, FALLOCATE with a mode, SYNCFS, STATX asking for a birth
time, the first POSIX-ACL create on each thread), so the ctypes cost is fine.
"""

from __future__ import annotations

import ctypes
import os
import struct
from typing import Final

__all__ = ["CLONE_FS", "birth_time", "fallocate", "renameat2", "syncfs", "unshare"]

#: unshare(2): stop sharing the working directory, root and umask with the other threads.
CLONE_FS: Final = 0x0000_0200

_libc: Final = ctypes.CDLL(None, use_errno=True)
_renameat2 = _libc.renameat2
_renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_renameat2.restype = ctypes.c_int
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int
_syncfs = _libc.syncfs
_syncfs.argtypes = [ctypes.c_int]
_syncfs.restype = ctypes.c_int
_unshare = _libc.unshare
_unshare.argtypes = [ctypes.c_int]
_unshare.restype = ctypes.c_int
_statx = _libc.statx
_statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
_statx.restype = ctypes.c_int
_AT_EMPTY_PATH: Final = 0x1000
_AT_SYMLINK_NOFOLLOW: Final = 0x100
_STATX_BTIME: Final = 0x800
#: struct statx: stx_mask at 0, stx_btime (tv_sec s64, tv_nsec u32) at 80; 256 bytes in all.
_STATX_MASK: Final = struct.Struct("<I")
_STATX_BTIME_AT: Final = struct.Struct("<qI")


def _check(result: int) -> None:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def renameat2(olddirfd: int, old: bytes, newdirfd: int, new: bytes, flags: int) -> None:
    """``renameat2(2)``: rename with RENAME_NOREPLACE / RENAME_EXCHANGE / RENAME_WHITEOUT."""
    _check(_renameat2(olddirfd, old, newdirfd, new, flags))


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """``fallocate(2)`` with any mode (KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE...)."""
    _check(_fallocate(fd, mode, offset, length))


def unshare(flags: int) -> None:
    """``unshare(2)`` for the calling thread (``CLONE_FS``: a umask of its own)."""
    _check(_unshare(flags))


def syncfs(fd: int) -> None:
    """``syncfs(2)``: flush the whole host filesystem holding ``fd`` (a guest ``sync``)."""
    _check(_syncfs(fd))


def birth_time(fd: int) -> tuple[int, int] | None:
    """The creation time (seconds, nanoseconds) of the file ``fd`` refers to (an ``O_PATH`` fd
    is fine, symlinks are not followed), or None when the host filesystem records none."""
    buf = ctypes.create_string_buffer(256)
    _check(_statx(fd, b"", _AT_EMPTY_PATH | _AT_SYMLINK_NOFOLLOW, _STATX_BTIME, buf))
    (mask,) = _STATX_MASK.unpack_from(buf, 0)
    if not mask & _STATX_BTIME:
        return None
    sec, nsec = _STATX_BTIME_AT.unpack_from(buf, 80)
    return sec, nsec
