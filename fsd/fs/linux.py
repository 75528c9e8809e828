"""Linux calls the ``os`` module lacks (renameat2, fallocate modes, syncfs), through libc.

They are rare (RENAME2 with flags, FALLOCATE with a mode, SYNCFS), so the ctypes cost is fine.
"""

from __future__ import annotations

import ctypes
import os
from typing import Final

__all__ = ["fallocate", "renameat2", "syncfs"]

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


def syncfs(fd: int) -> None:
    """``syncfs(2)``: flush the whole host filesystem holding ``fd`` (a guest ``sync``)."""
    _check(_syncfs(fd))
