"""Extended attributes of shared inodes, and how their names map between guest and host.

Every call goes to an fd of the inode itself, opened read-only and non-blocking through its
``/proc/self/fd/N`` magic link (:func:`fsd.fs.procfd.xattr_fd`): regular files and directories
only. A symlink or a special file (fifo, socket, device) is never opened, so its xattrs answer
EOPNOTSUPP, as from a file system without xattrs: there is no way to name it for the xattr
calls that works in every sandbox mode without changing the process's working directory.

With ``rewrite_security_xattrs``, guest ``security.*`` names other than ``security.selinux``
are stored as ``user.virtiofs.security.*``, so an unprivileged host user can hold them and the
host's LSMs never see the guest's labels; guest access to ``user.virtiofs.*`` itself is hidden
(set EPERM, get/remove ENODATA) as in crosvm.

With virtiofsd's ``--xattrmap`` the names follow its rules instead (:mod:`fsd.fs.xattrmap`);
with ``--no-xattr`` every xattr operation answers ENOSYS. Each is an :class:`XattrNames`
policy, picked once by :func:`xattr_names`.

The POSIX ACL names ``system.posix_acl_access`` and ``system.posix_acl_default`` reach the
host only with ``posix_acl`` on (:class:`WithoutAcls`).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Final

from fsd.fs import procfd
from fsd.fs.inodes import Inode
from fsd.fs.xattrmap import XattrMap
from fsd.fuse.abi import XATTR_NAME_MAX, XATTR_SIZE_MAX

__all__ = [
    "ACL_ACCESS",
    "ACL_DEFAULT",
    "ACL_NAMES",
    "MappedNames",
    "NoXattrs",
    "RewrittenSecurityNames",
    "WithoutAcls",
    "XattrNames",
    "checked_name",
    "clear_sgid",
    "getxattr",
    "kill_suidgid",
    "listxattr",
    "opened",
    "removexattr",
    "setxattr",
    "xattr_names",
]

_CREATE: Final = os.XATTR_CREATE
_REPLACE: Final = os.XATTR_REPLACE
_PREFIX: Final = b"user.virtiofs."
_SECURITY: Final = b"security."
_SELINUX: Final = b"security.selinux"
_CAPABILITY: Final = b"security.capability"
#: Where Linux keeps a file's access ACL and a directory's default ACL.
ACL_ACCESS: Final = b"system.posix_acl_access"
ACL_DEFAULT: Final = b"system.posix_acl_default"
ACL_NAMES: Final = (ACL_ACCESS, ACL_DEFAULT)


class XattrNames:
    """How guest xattr names become host names and back: unchanged (fsd's default).

    The policies: this one, :class:`RewrittenSecurityNames` (crosvm's
    ``rewrite_security_xattrs``), :class:`MappedNames` (virtiofsd's ``--xattrmap``) and
    :class:`NoXattrs` (``--no-xattr``). :func:`xattr_names` picks one from the options.
    """

    __slots__ = ()

    #: Whether the guest's ``security.capability`` is stored under another name, which the
    #: host kernel then does not drop on write (so HANDLE_KILLPRIV_V2 must stay off: the
    #: guest kernel then removes it itself, through these names).
    renames_capability = False

    def to_host(self, name: bytes, *, setting: bool = False, getting: bool = False) -> bytes:
        """The host name for guest xattr ``name``; raises for names the guest may not use
        (``setting``: SETXATTR asks; ``getting``: GETXATTR asks)."""
        return checked_name(name)

    def to_guest(self, host_names: list[bytes]) -> list[bytes]:
        """The names the guest sees for a host listing."""
        return host_names


class NoXattrs(XattrNames):
    """``--no-xattr``: every xattr operation answers ENOSYS, and the guest kernel stops
    sending them (it remembers ENOSYS per operation for the whole mount)."""

    __slots__ = ()

    def to_host(self, name: bytes, *, setting: bool = False, getting: bool = False) -> bytes:
        raise OSError(errno.ENOSYS, "xattrs are disabled (--no-xattr)")

    def to_guest(self, host_names: list[bytes]) -> list[bytes]:
        raise OSError(errno.ENOSYS, "xattrs are disabled (--no-xattr)")


class RewrittenSecurityNames(XattrNames):
    """crosvm's ``rewrite_security_xattrs`` (see the module docstring)."""

    __slots__ = ()
    renames_capability = True

    def to_host(self, name: bytes, *, setting: bool = False, getting: bool = False) -> bytes:
        name = checked_name(name)
        if name.startswith(_PREFIX):
            if setting:
                raise OSError(errno.EPERM, "user.virtiofs.* is reserved")
            raise OSError(errno.ENODATA, "user.virtiofs.* is hidden")
        if name.startswith(_SECURITY) and name != _SELINUX:
            name = _PREFIX + name
            if len(name) > XATTR_NAME_MAX:
                raise OSError(errno.ERANGE, "xattr name too long once rewritten")
        return name

    def to_guest(self, host_names: list[bytes]) -> list[bytes]:
        cut = len(_PREFIX)
        return [n[cut:] if n.startswith(_PREFIX) else n for n in host_names]


class MappedNames(XattrNames):
    """virtiofsd's ``--xattrmap`` (:mod:`fsd.fs.xattrmap`)."""

    __slots__ = ("map", "renames_capability")

    def __init__(self, xattr_map: XattrMap) -> None:
        self.map = xattr_map
        self.renames_capability = xattr_map.renames(_CAPABILITY)

    def to_host(self, name: bytes, *, setting: bool = False, getting: bool = False) -> bytes:
        host = self.map.to_host(checked_name(name), getting=getting)
        if len(host) > XATTR_NAME_MAX:
            raise OSError(errno.ERANGE, "xattr name too long once mapped")
        return host

    def to_guest(self, host_names: list[bytes]) -> list[bytes]:
        return self.map.to_guest(host_names)


class WithoutAcls(XattrNames):
    """POSIX ACLs off: the ACL names answer EOPNOTSUPP and listings leave them out, around
    another policy (virtiofsd does the same).

    Without FUSE_POSIX_ACL a Linux 6.1 client passes ``system.posix_acl_*`` through as plain
    xattrs, and its VFS leaves the permission check of ``system.*`` names to the filesystem:
    a guest user could otherwise set the ACL, and with it the mode, of any file in the share
    the daemon can change, and the guest would not enforce what it set.
    """

    __slots__ = ("names", "renames_capability")

    def __init__(self, names: XattrNames) -> None:
        self.names = names
        self.renames_capability = names.renames_capability

    def to_host(self, name: bytes, *, setting: bool = False, getting: bool = False) -> bytes:
        if name in ACL_NAMES:
            raise OSError(errno.EOPNOTSUPP, "POSIX ACLs are off here (--posix-acl)")
        return self.names.to_host(name, setting=setting, getting=getting)

    def to_guest(self, host_names: list[bytes]) -> list[bytes]:
        return [n for n in self.names.to_guest(host_names) if n not in ACL_NAMES]


def xattr_names(
    *, enabled: bool, rewrite_security: bool, xattr_map: XattrMap | None, posix_acl: bool = False
) -> XattrNames:
    """The naming policy the options ask for (they were checked not to conflict)."""
    if not enabled:
        return NoXattrs()
    names: XattrNames
    if xattr_map is not None:
        names = MappedNames(xattr_map)
    elif rewrite_security:
        names = RewrittenSecurityNames()
    else:
        names = XattrNames()
    return names if posix_acl else WithoutAcls(names)


def checked_name(name: bytes) -> bytes:
    """``name`` if the host could hold it: not empty, no NUL, at most XATTR_NAME_MAX bytes."""
    if not name or b"\0" in name:
        raise OSError(errno.EINVAL, "empty xattr name")
    if len(name) > XATTR_NAME_MAX:
        raise OSError(errno.ERANGE, "xattr name too long")
    return name


def getxattr(inode: Inode, name: bytes) -> bytes:
    """The value of host xattr ``name`` (ENODATA if unset)."""
    fd = procfd.xattr_fd(inode.fd, inode.kind)
    try:
        return os.getxattr(fd, name)
    finally:
        os.close(fd)


def listxattr(inode: Inode) -> list[bytes]:
    """Host xattr names of the inode."""
    fd = procfd.xattr_fd(inode.fd, inode.kind)
    try:
        return [os.fsencode(n) for n in os.listxattr(fd)]
    finally:
        os.close(fd)


def opened(inode: Inode) -> int:
    """An fd of ``inode`` for :func:`setxattr` and :func:`removexattr` (the caller closes
    it), opened as the daemon before any switch to the caller's ids: the open only names the
    inode, and the host checks the change itself against whoever makes it."""
    return procfd.xattr_fd(inode.fd, inode.kind)


def setxattr(fd: int, name: bytes, value: bytes, flags: int) -> None:
    """Set host xattr ``name`` on open file ``fd``; ``flags`` is XATTR_CREATE,
    XATTR_REPLACE or 0."""
    if flags & ~(_CREATE | _REPLACE):
        raise OSError(errno.EINVAL, f"unknown setxattr flags {flags:#x}")
    if len(value) > XATTR_SIZE_MAX:
        raise OSError(errno.E2BIG, "xattr value too large")
    os.setxattr(fd, name, value, flags)


def removexattr(fd: int, name: bytes) -> None:
    """Remove host xattr ``name`` from open file ``fd`` (ENODATA if unset)."""
    os.removexattr(fd, name)


def clear_sgid(fd: int) -> None:
    """Clear the set-group-ID bit of the open file ``fd``, if set (SETXATTR_ACL_KILL_SGID)."""
    mode = os.fstat(fd).st_mode
    if mode & stat.S_ISGID:
        os.fchmod(fd, stat.S_IMODE(mode) & ~stat.S_ISGID)


def kill_suidgid(fd: int, *, opened: bool = True) -> None:
    """Clear set-user-ID, and set-group-ID if group-executable, as a write by a user would,
    on the file ``fd`` refers to: an open file, or (``opened=False``) an inode's O_PATH fd.

    The daemon writes as root with CAP_FSETID, so the host kernel keeps these bits; with
    HANDLE_KILLPRIV_V2 the guest asks the server to drop them (WRITE_KILL_SUIDGID,
    FATTR_KILL_SUIDGID, OPEN_KILL_SUIDGID). The host write itself drops security.capability.
    """
    mode = os.fstat(fd).st_mode
    new = mode & ~stat.S_ISUID
    if mode & stat.S_IXGRP:
        new &= ~stat.S_ISGID
    if new != mode:
        if opened:
            os.fchmod(fd, stat.S_IMODE(new))
        else:
            procfd.chmod(fd, stat.S_IMODE(new))
