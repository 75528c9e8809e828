"""Unix socket files the daemon serves on: created private, replaced only when stale, removed
only while they are still ours. Shared by the vhost-user and the allowlist control sockets."""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import socket
import stat

__all__ = ["bind_private", "is_listening", "remove_stale", "unlink_if_ours"]

log = logging.getLogger("fsd")

_SO_ACCEPTCON = 0x10000


def is_listening(path: str | os.PathLike[str]) -> bool:
    """True if some process listens on the Unix socket bound at ``path`` (/proc/net/unix).

    Connecting to find out would not do: a vhost-user back-end takes the first connection as
    its front-end."""
    target = os.path.abspath(path)
    try:
        with open("/proc/net/unix") as table:
            next(table)
            for row in table:
                cols = row.split()
                if len(cols) >= 8 and cols[7] == target and int(cols[3], 16) & _SO_ACCEPTCON:
                    return True
    except OSError:
        return False
    return False


def remove_stale(path: str) -> None:
    """Unlink a socket file nobody listens on; refuse a live one or a file that is no socket."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket", path)
    if is_listening(path):
        raise OSError(errno.EADDRINUSE, "another server is listening on this socket", path)
    log.info("removing stale socket %s", path)
    os.unlink(path)


def bind_private(
    sock: socket.socket, path: str, *, mode: int = 0o600, group: str | None = None
) -> tuple[int, int]:
    """Bind ``sock`` at ``path`` (replacing a stale file) and restrict who may connect, before
    the caller listens: ``mode`` (0600: the daemon's user only), or 0660 for ``group``.
    Returns the file's identity for :func:`unlink_if_ours`."""
    remove_stale(path)
    sock.bind(path)
    try:
        if group is not None:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                raise LookupError(f"socket group {group!r}: no such group") from None
            os.chown(path, -1, gid)
            mode |= 0o060
        os.chmod(path, mode)
        info = os.lstat(path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return info.st_dev, info.st_ino


def unlink_if_ours(path: str, identity: tuple[int, int]) -> None:
    """Remove our socket file on exit, but not one a successor bound at the same path."""
    try:
        info = os.lstat(path)
        if (info.st_dev, info.st_ino) == identity:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)
