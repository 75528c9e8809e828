"""Extended attributes of shared inodes, and crosvm's ``rewrite_security_xattrs`` name mapping.

Every call goes through the inode's ``/proc/self/fd/N`` magic link: the kernel resolves it to
the inode the O_PATH fd pins, without opening it and without following a symlink any further
(a symlink's own xattrs are read, never its target's), so this is safe for every file type and
the answers match a plain directory (``user.*`` on a symlink is EPERM from the host itself).

With ``rewrite_security_xattrs``, guest ``security.*`` names other than ``security.selinux``
are stored as ``user.virtiofs.security.*``, so an unprivileged host user can hold them and the
host's LSMs never see the guest's labels; guest access to ``user.virtiofs.*`` itself is hidden
(set EPERM, get/remove ENODATA) as in crosvm.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Final

from fsd.fs.inodes import Inode
from fsd.fuse.abi import XATTR_NAME_MAX, XATTR_SIZE_MAX

__all__ = [
    "getxattr",
    "guest_names",
    "host_name",
    "kill_suidgid",
    "listxattr",
    "removexattr",
    "setxattr",
]

_CREATE: Final = os.XATTR_CREATE
_REPLACE: Final = os.XATTR_REPLACE
_PREFIX: Final = b"user.virtiofs."
_SECURITY: Final = b"security."
_SELINUX: Final = b"security.selinux"


def host_name(name: bytes, *, rewrite: bool, setting: bool = False) -> bytes:
    """The host name for guest xattr ``name``; raises for names the guest may not use."""
    if not name or b"\0" in name:
        raise OSError(errno.EINVAL, "empty xattr name")
    if len(name) > XATTR_NAME_MAX:
        raise OSError(errno.ERANGE, "xattr name too long")
    if not rewrite:
        return name
    if name.startswith(_PREFIX):
        if setting:
            raise OSError(errno.EPERM, "user.virtiofs.* is reserved")
        raise OSError(errno.ENODATA, "user.virtiofs.* is hidden")
    if name.startswith(_SECURITY) and name != _SELINUX:
        name = _PREFIX + name
        if len(name) > XATTR_NAME_MAX:
            raise OSError(errno.ERANGE, "xattr name too long once rewritten")
    return name


def guest_names(host_names: list[bytes], *, rewrite: bool) -> list[bytes]:
    """The names the guest sees for a host listing (``user.virtiofs.`` stripped)."""
    if not rewrite:
        return host_names
    cut = len(_PREFIX)
    return [n[cut:] if n.startswith(_PREFIX) else n for n in host_names]


def getxattr(inode: Inode, name: bytes) -> bytes:
    """The value of host xattr ``name`` (ENODATA if unset)."""
    return os.getxattr(inode.proc_path, name)


def listxattr(inode: Inode) -> list[bytes]:
    """Host xattr names of the inode."""
    return [os.fsencode(n) for n in os.listxattr(inode.proc_path)]


def setxattr(inode: Inode, name: bytes, value: bytes, flags: int) -> None:
    """Set host xattr ``name``; ``flags`` is XATTR_CREATE, XATTR_REPLACE or 0."""
    if flags & ~(_CREATE | _REPLACE):
        raise OSError(errno.EINVAL, f"unknown setxattr flags {flags:#x}")
    if len(value) > XATTR_SIZE_MAX:
        raise OSError(errno.E2BIG, "xattr value too large")
    os.setxattr(inode.proc_path, name, value, flags)


def removexattr(inode: Inode, name: bytes) -> None:
    """Remove host xattr ``name`` (ENODATA if unset)."""
    os.removexattr(inode.proc_path, name)


def kill_suidgid(target: int | str) -> None:
    """Clear set-user-ID, and set-group-ID if group-executable, as a write by a user would.

    The daemon writes as root with CAP_FSETID, so the host kernel keeps these bits; with
    HANDLE_KILLPRIV_V2 the guest asks the server to drop them (WRITE_KILL_SUIDGID,
    FATTR_KILL_SUIDGID, OPEN_KILL_SUIDGID). The host write itself drops security.capability.
    """
    mode = os.stat(target).st_mode
    new = mode & ~stat.S_ISUID
    if mode & stat.S_IXGRP:
        new &= ~stat.S_ISGID
    if new != mode:
        os.chmod(target, stat.S_IMODE(new))
