"""Unix socket files the daemon serves on: created private, replaced only when stale, removed
only while they are still ours. Shared by the vhost-user, allowlist and status sockets.

The command line binds them all before it enters the sandbox (:func:`listen_unix`), where
their directories no longer exist; the server then only accepts on them, and whoever bound a
socket removes its file at exit (:meth:`Listener.remove`: the sandbox's supervisor, outside).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import grp
import logging
import os
import socket
import stat
from typing import Final

import trio

__all__ = [
    "Listener",
    "accept_client",
    "bind_private",
    "is_listening",
    "listen_unix",
    "remove_stale",
    "unlink_if_ours",
]

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


@dataclasses.dataclass
class Listener:
    """A listening socket bound ahead of serving, and what to remove at exit."""

    sock: socket.socket
    #: The socket file's path, and its identity when this process created it (None: adopted
    #: from systemd or inherited, not ours to remove).
    path: str | None = None
    identity: tuple[int, int] | None = None

    def remove(self) -> None:
        """Remove the socket file if this process created it and it is still ours."""
        if self.path is not None and self.identity is not None:
            unlink_if_ours(self.path, self.identity)


def listen_unix(
    path: str, kind: int, backlog: int, *, mode: int = 0o600, group: str | None = None
) -> Listener:
    """Bind a Unix socket of type ``kind`` at ``path`` with :func:`bind_private` (restricted
    before anyone can connect) and listen. An OSError names the path."""
    sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
    try:
        identity = bind_private(sock, path, mode=mode, group=group)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if exc.filename is None:  # bind(2) and listen(2) errors do not say which path
            raise OSError(exc.errno, exc.strerror, path) from exc
        raise
    except BaseException:
        sock.close()
        raise
    return Listener(sock, path, identity)


#: accept(2) errors that pass: out of fds or memory for a moment (retried after a pause), or a
#: client that went away before it was accepted.
_RETRY_LATER: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_CLIENT_GONE: Final = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EINTR})


async def accept_client(listener: trio.socket.SocketType, what: str) -> trio.socket.SocketType:
    """The next client of a control socket (``what`` names it in the log), riding out fd
    exhaustion and connections aborted meanwhile: neither may end the daemon's server."""
    while True:
        try:
            connection, _ = await listener.accept()
        except OSError as exc:
            if exc.errno in _RETRY_LATER:
                log.error("%s: accept failed, retrying in 100 ms: %s", what, exc)
                await trio.sleep(0.1)
            elif exc.errno not in _CLIENT_GONE:
                raise
        else:
            return connection
