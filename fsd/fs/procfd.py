"""The one way fsd reaches an inode it holds by fd: the magic links of its own fd directory.

fsd holds inodes by ``O_PATH`` fds (or file handles reopened into fds) and must reopen them
for I/O or change them, never by a path a rename on the host could redirect. The kernel's
``/proc/self/fd/N`` magic link names exactly the file fd N refers to and, when it is a
symlink, the symlink itself: resolving it follows nothing further.

Every call here is the ``*at`` form relative to a directory fd of this process's
``/proc/self/fd`` (:func:`directory`), with the fd number as the name: the same resolution as
the path ``/proc/self/fd/N``, without needing that path. That is what lets the same code run
in every sandbox mode: in a chroot into the shared directory there is no /proc at all, and
the directory fd, opened before the chroot, still works (:func:`use`). It is also a shorter
walk for the kernel than the path.

Two calls have no ``*at`` form:

* ``truncate``: the file is opened for writing through the directory and ``ftruncate``\\ d;
* the extended-attribute calls (``getxattrat`` needs Linux 6.13): :func:`xattr_fd` opens a
  regular file or a directory read-only and non-blocking through the directory, for the
  ``f*xattr`` calls. A symlink or a special file is never opened (a fifo would block, a
  device must never be opened by fsd): its xattrs answer EOPNOTSUPP, as from a file system
  without xattrs (docs/filesystem.md). virtiofsd reaches them by changing each worker
  thread's working directory to the fd directory; fsd keeps the process-wide working
  directory alone.

The directory fd belongs to one process: /proc/self is resolved when it is opened. A forked
child (the namespace sandbox forks) must not use its parent's, so it is forgotten at fork and
the child opens its own, or is given one with :func:`use`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import Final

__all__ = [
    "chmod",
    "chown",
    "directory",
    "link",
    "open_fds",
    "readlink",
    "reopen",
    "truncate",
    "use",
    "utime",
    "xattr_fd",
]

PROC_SELF_FD: Final = "/proc/self/fd"
_DIR_FLAGS: Final = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_XATTR_FLAGS: Final = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY

_dir_fd = -1
_owned = False  # opened here (closed when replaced), not given by use()


def directory() -> int:
    """This process's fd directory, as a directory fd (opened on first use)."""
    global _dir_fd, _owned
    if _dir_fd < 0:
        _dir_fd = os.open(PROC_SELF_FD, _DIR_FLAGS)
        _owned = True
    return _dir_fd


def use(fd: int) -> None:
    """Reach inodes through ``fd``, a directory fd of this process's /proc/self/fd opened
    while that path existed (before a chroot); this module owns it from now on."""
    global _dir_fd, _owned
    if fd == _dir_fd:
        return
    if not stat.S_ISDIR(os.fstat(fd).st_mode):
        raise ValueError(f"fd {fd} is not a directory")
    _forget()
    _dir_fd, _owned = fd, True


def _forget() -> None:
    global _dir_fd, _owned
    if _dir_fd >= 0 and _owned:
        with contextlib.suppress(OSError):
            os.close(_dir_fd)
    _dir_fd, _owned = -1, False


os.register_at_fork(after_in_child=_forget)


def reopen(fd: int, flags: int, mode: int = 0o777) -> int:
    """A new open file description of the file ``fd`` refers to (``open(2)`` of the magic
    link: O_CREAT or O_TMPFILE apply to the directory ``fd`` names)."""
    return os.open(str(fd), flags, mode, dir_fd=_dir_fd if _dir_fd >= 0 else directory())


def chmod(fd: int, mode: int) -> None:
    """``chmod`` the file ``fd`` refers to."""
    os.chmod(str(fd), mode, dir_fd=_dir_fd if _dir_fd >= 0 else directory())


def chown(fd: int, uid: int, gid: int) -> None:
    """``chown`` the file ``fd`` refers to (-1 leaves an id)."""
    os.chown(str(fd), uid, gid, dir_fd=_dir_fd if _dir_fd >= 0 else directory())


def utime(fd: int, ns: tuple[int, int] | None = None) -> None:
    """Set the file's access and modification times (``None``: now, which needs only write
    access, not ownership)."""
    dir_fd = _dir_fd if _dir_fd >= 0 else directory()
    if ns is None:
        os.utime(str(fd), dir_fd=dir_fd)
    else:
        os.utime(str(fd), ns=ns, dir_fd=dir_fd)


def truncate(fd: int, size: int) -> None:
    """``truncate`` the regular file ``fd`` refers to: opened for writing (the same
    permission check as truncate(2)), then ``ftruncate``."""
    opened = reopen(fd, os.O_WRONLY | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        os.ftruncate(opened, size)
    finally:
        os.close(opened)


def link(fd: int, name: bytes, dir_fd: int) -> None:
    """A new hard link ``name`` in directory ``dir_fd`` to the file ``fd`` refers to
    (``linkat`` following the magic link, which ends at the file itself)."""
    os.link(
        str(fd),
        name,
        src_dir_fd=_dir_fd if _dir_fd >= 0 else directory(),
        dst_dir_fd=dir_fd,
        follow_symlinks=True,
    )


def readlink(fd: int) -> str:
    """What fd ``fd`` is, as the kernel describes it (``anon_inode:[eventfd]``, a path...)."""
    return os.readlink(str(fd), dir_fd=_dir_fd if _dir_fd >= 0 else directory())


def open_fds() -> int:
    """How many fds this process has open."""
    listing = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=directory())
    try:
        return len(os.listdir(listing)) - 1  # without the one listing itself
    finally:
        os.close(listing)


def xattr_fd(fd: int, kind: int) -> int:
    """An fd for the ``f*xattr`` calls on the file ``fd`` refers to, of file type ``kind``
    (``S_IFMT`` bits): regular files and directories, opened read-only without blocking;
    EOPNOTSUPP for anything else, which is never opened. The caller closes it."""
    if kind == stat.S_IFREG:
        return reopen(fd, _XATTR_FLAGS)
    if kind == stat.S_IFDIR:
        return reopen(fd, _XATTR_FLAGS | os.O_DIRECTORY)
    raise OSError(errno.EOPNOTSUPP, "extended attributes of symlinks and special files")
