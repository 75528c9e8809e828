"""STATX through the host kernel: statx(2) asking for the birth time on an fsd mount.

Linux sends FUSE_STATX only when a caller asks for STATX_BTIME (plain stat() stays GETATTR); it
does so whatever minor the server replied, and falls back to GETATTR for good on ENOSYS. So
the birth time showing up on the mount, equal to the host's, proves STATX was served. Python
3.11's ``os.stat`` never asks for btime, hence statx(2) through ctypes here.
"""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

import pytest

from fsd.testing.mount import Mount

pytestmark = [pytest.mark.devfuse, pytest.mark.timeout(60, method="thread")]

_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100
_AT_SYMLINK_NOFOLLOW = 0x100
_AT_STATX_FORCE_SYNC = 0x2000
STATX_BASIC_STATS = 0x7FF
STATX_BTIME = 0x800


def statx(path: Path, mask: int = STATX_BASIC_STATS | STATX_BTIME) -> dict[str, int]:
    """The statx(2) fields these tests compare (AT_SYMLINK_NOFOLLOW, forced fresh)."""
    buf = ctypes.create_string_buffer(256)
    flags = _AT_SYMLINK_NOFOLLOW | _AT_STATX_FORCE_SYNC
    if _libc.statx(_AT_FDCWD, os.fsencode(path), flags, mask, buf) < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(path))
    got_mask, _blksize, _attrs, nlink, uid, gid, mode = struct.unpack_from("<IIQIIIH", buf, 0)
    ino, size = struct.unpack_from("<QQ", buf, 32)
    b_s, b_ns = struct.unpack_from("<qI", buf, 80)
    m_s, m_ns = struct.unpack_from("<qI", buf, 112)
    return {
        "mask": got_mask, "nlink": nlink, "uid": uid, "gid": gid, "mode": mode, "ino": ino,
        "size": size, "btime_ns": b_s * 10**9 + b_ns, "mtime_ns": m_s * 10**9 + m_ns,
    }  # fmt: skip


def _host_has_btime(path: Path) -> bool:
    return bool(statx(path)["mask"] & STATX_BTIME)


@pytest.mark.parametrize("kind", ["file", "dir", "symlink"])
def test_birth_time_through_the_mount(fsd_mount: Mount, kind: str) -> None:
    host = fsd_mount.shared_dir / "x"
    if kind == "file":
        host.write_bytes(b"hello")
    elif kind == "dir":
        host.mkdir()
    else:
        os.symlink("elsewhere", host)
    want = statx(host)
    if not want["mask"] & STATX_BTIME:
        pytest.skip("the host filesystem records no birth time")
    got = statx(fsd_mount.mountpoint / "x")
    assert got["mask"] & STATX_BTIME, "STATX was not served (the kernel fell back to GETATTR)"
    assert got["mask"] & STATX_BASIC_STATS == STATX_BASIC_STATS
    for key in ("btime_ns", "mtime_ns", "ino", "mode", "nlink", "size", "uid", "gid"):
        assert got[key] == want[key], key


def test_plain_stat_and_statx_agree_and_stay_in_step(fsd_mount: Mount) -> None:
    """The basic fields STATX returns are the ones the kernel caches for stat()."""
    host = fsd_mount.shared_dir / "f"
    host.write_bytes(b"1")
    if not _host_has_btime(host):
        pytest.skip("the host filesystem records no birth time")
    path = fsd_mount.mountpoint / "f"
    first = statx(path)
    path.write_bytes(b"longer now")
    after = statx(path)
    st = os.lstat(path)
    assert after["size"] == st.st_size == 10
    assert after["btime_ns"] == first["btime_ns"]
    assert after["mtime_ns"] == st.st_mtime_ns
    assert after["ino"] == st.st_ino == host.stat().st_ino
