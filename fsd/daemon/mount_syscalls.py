"""mount(2), umount2(2) and mount-table queries, which the standard library does not offer.

Kept apart from the /dev/fuse loop so that tests and cleanup code can unmount without
importing trio or the FUSE server.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

__all__ = [
    "MNT_DETACH",
    "MS_NODEV",
    "MS_NOSUID",
    "abort_connection",
    "is_mount_point",
    "mount",
    "umount",
]

MS_NOSUID = 0x2
MS_NODEV = 0x4
MNT_DETACH = 0x2

_FUSECTL = Path("/sys/fs/fuse/connections")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.mount.restype = ctypes.c_int
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.umount2.restype = ctypes.c_int


def mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    """Call mount(2); raise :class:`OSError` with the kernel's errno on failure."""
    rc = _libc.mount(
        os.fsencode(source), os.fsencode(target), fstype.encode(), flags, data.encode()
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def umount(target: str, flags: int = MNT_DETACH) -> None:
    """Call umount2(2); lazy (MNT_DETACH) by default so that a busy mount still goes away."""
    rc = _libc.umount2(os.fsencode(target), flags)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def _unescape(field: str) -> str:
    """Undo the octal escapes (``\\040`` for a space, ...) that /proc/self/mountinfo uses."""
    out = bytearray()
    i = 0
    raw = field.encode()
    while i < len(raw):
        if raw[i] == 0x5C and raw[i + 1 : i + 4].isdigit() and len(raw[i + 1 : i + 4]) == 3:
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


def mount_points() -> dict[str, str]:
    """Map each mount point of this mount namespace to its fstype.

    Read from /proc/self/mountinfo rather than by stat'ing paths: a stat on a dead or wedged
    FUSE mount fails with ENOTCONN or blocks.
    """
    table: dict[str, str] = {}
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            try:
                sep = fields.index("-")
                table[_unescape(fields[4])] = fields[sep + 1]
            except (ValueError, IndexError):
                continue
    return table


def is_mount_point(path: str) -> bool:
    """Whether ``path`` (absolute, symlinks resolved) is the root of a mount."""
    return path in mount_points()


def abort_connection(st_dev: int) -> bool:
    """Abort a wedged FUSE connection through fusectl; return whether it was done.

    Blocked clients then get ECONNABORTED and the mount can be detached. fusectl is mounted
    on demand because it is not mounted by default on these machines.
    """
    if not _FUSECTL.is_dir():
        return False
    if not any(_FUSECTL.iterdir()) and str(_FUSECTL) not in mount_points():
        try:
            mount("fusectl", str(_FUSECTL), "fusectl", 0, "")
        except OSError:
            return False
    abort = _FUSECTL / str(os.minor(st_dev)) / "abort"
    try:
        abort.write_text("1")
    except OSError:
        return False
    return True
