"""Pure FUSE encoding helpers: names out of request bodies, attributes into reply structs.

No I/O here: the caller passes bytes in and gets values (or raises :class:`ProtocolError`) out,
so every rule is testable with plain bytes.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Final

from fsd.fuse.abi import ATTR
from fsd.fuse.errors import ProtocolError

__all__ = [
    "NAME_MAX",
    "attr_values",
    "check_name",
    "decode_device",
    "fuse_attr",
    "mapped_attr_values",
    "mapped_fuse_attr",
    "parse_name",
    "parse_symlink",
    "parse_two_names",
    "parse_xattr_name",
    "split_timeout",
]

#: Longest name the kernel sends (``FUSE_NAME_MAX``, 1024) ; hosts allow 255, checked there.
NAME_MAX: Final = 1024
_NSEC: Final = 1_000_000_000
_pack_attr: Final = ATTR.pack


def decode_device(rdev: int) -> int:
    """MKNOD's device number as the host's ``dev_t``.

    FUSE carries it in the kernel's ``new_encode_dev`` format (32 bits: minor bits 0-7, a
    12-bit major in bits 8-19, minor bits 8-19 in bits 20-31), on virtio-fs and /dev/fuse
    alike; decoded into major and minor and rebuilt with ``os.makedev`` rather than passed on
    as it came (with glibc's layout the two agree on every 32-bit value, but that is glibc's
    choice, not a FUSE rule).
    """
    major = (rdev & 0xFFF00) >> 8
    minor = (rdev & 0xFF) | ((rdev >> 12) & 0xFFF00)
    return os.makedev(major, minor)


def check_name(name: bytes, *, allow_dots: bool = False) -> bytes:
    """Reject names that could walk out of a directory: empty, with ``/``, or ``.``/``..``.

    LOOKUP passes ``allow_dots`` because NFS-style lookups of ``.`` and ``..`` are legitimate
    there (the server resolves them without leaving the share).
    """
    if not name or len(name) > NAME_MAX or b"/" in name:
        raise ProtocolError(f"bad name {name[:64]!r}")
    if not allow_dots and name in (b".", b".."):
        raise ProtocolError(f"name {name!r} not allowed here")
    return name


def parse_name(body: bytes, *, allow_dots: bool = False) -> bytes:
    """The NUL-terminated name that starts ``body``; anything after the NUL is ignored."""
    end = body.find(b"\0")
    if end < 0:
        raise ProtocolError("name without NUL terminator")
    return check_name(body[:end], allow_dots=allow_dots)


def parse_two_names(body: bytes) -> tuple[bytes, bytes]:
    """Two consecutive NUL-terminated names (RENAME's ``old\\0new\\0``), both validated."""
    end = body.find(b"\0")
    if end < 0:
        raise ProtocolError("first name without NUL terminator")
    return check_name(body[:end]), parse_name(body[end + 1 :])


def parse_symlink(body: bytes) -> tuple[bytes, bytes]:
    """SYMLINK's body is ``name\\0target\\0``: the name is validated, the target is opaque."""
    end = body.find(b"\0")
    if end < 0:
        raise ProtocolError("symlink name without NUL terminator")
    name = check_name(body[:end])
    tend = body.find(b"\0", end + 1)
    if tend < 0:
        raise ProtocolError("symlink target without NUL terminator")
    target = body[end + 1 : tend]
    if not target:
        raise ProtocolError("empty symlink target", errno.ENOENT)
    return name, target


def parse_xattr_name(body: bytes) -> bytes:
    """The NUL-terminated xattr name that starts ``body`` (any bytes but NUL, even ``/``)."""
    end = body.find(b"\0")
    if end < 0:
        raise ProtocolError("xattr name without NUL terminator")
    if end == 0 or end > 255:
        raise ProtocolError(f"bad xattr name length {end}", errno.ERANGE if end else errno.EINVAL)
    return body[:end]


def attr_values(st: os.stat_result) -> tuple[int, ...]:
    """The 16 ``fuse_attr`` fields for a host stat result, in wire order."""
    a_s, a_ns = divmod(st.st_atime_ns, _NSEC)
    m_s, m_ns = divmod(st.st_mtime_ns, _NSEC)
    c_s, c_ns = divmod(st.st_ctime_ns, _NSEC)
    return (
        st.st_ino,
        st.st_size,
        st.st_blocks,
        a_s,
        m_s,
        c_s,
        a_ns,
        m_ns,
        c_ns,
        st.st_mode,
        st.st_nlink & 0xFFFFFFFF,
        st.st_uid,
        st.st_gid,
        st.st_rdev & 0xFFFFFFFF,
        st.st_blksize,
        0,
    )


def mapped_attr_values(
    uid_to_guest: Callable[[int], int], gid_to_guest: Callable[[int], int]
) -> Callable[[os.stat_result], tuple[int, ...]]:
    """:func:`attr_values` with the owner translated to the guest's ids (``--uid-map``).

    A separate function so that a server without maps keeps the plain one: no per-reply cost.
    """

    def values(st: os.stat_result) -> tuple[int, ...]:
        fields = attr_values(st)
        return (*fields[:11], uid_to_guest(st.st_uid), gid_to_guest(st.st_gid), *fields[13:])

    return values


def fuse_attr(st: os.stat_result) -> bytes:
    """``struct fuse_attr`` for a host stat result, packed: what every attribute reply holds.

    The hot path of GETATTR, LOOKUP and READDIRPLUS, so it reads the stat result's tuple
    fields (``st[7]`` is the whole seconds of ``st_atime``) and packs in one call; it is
    :func:`attr_values` packed, which the tests check.
    """
    return _pack_attr(
        st[1], st[6], st.st_blocks, st[7], st[8], st[9],
        st.st_atime_ns % _NSEC, st.st_mtime_ns % _NSEC, st.st_ctime_ns % _NSEC,
        st[0], st[3] & 0xFFFFFFFF, st[4], st[5], st.st_rdev & 0xFFFFFFFF, st.st_blksize, 0,
    )  # fmt: skip


def mapped_fuse_attr(
    uid_to_guest: Callable[[int], int], gid_to_guest: Callable[[int], int]
) -> Callable[[os.stat_result], bytes]:
    """:func:`fuse_attr` with the owner translated to the guest's ids (``--uid-map``)."""

    def attr(st: os.stat_result) -> bytes:
        return _pack_attr(
            st[1], st[6], st.st_blocks, st[7], st[8], st[9],
            st.st_atime_ns % _NSEC, st.st_mtime_ns % _NSEC, st.st_ctime_ns % _NSEC,
            st[0], st[3] & 0xFFFFFFFF, uid_to_guest(st[4]), gid_to_guest(st[5]),
            st.st_rdev & 0xFFFFFFFF, st.st_blksize, 0,
        )  # fmt: skip

    return attr


def split_timeout(seconds: float) -> tuple[int, int]:
    """A cache timeout as the (seconds, nanoseconds) pair FUSE replies carry."""
    if seconds <= 0:
        return 0, 0
    whole = int(seconds)
    return whole, min(round((seconds - whole) * _NSEC), _NSEC - 1)
