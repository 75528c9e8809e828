"""systemd's two service protocols, spoken without libsystemd.

**Readiness** (``sd_notify``): a service started with ``Type=notify`` finds a datagram socket
in ``$NOTIFY_SOCKET`` and sends it newline-separated ``KEY=VALUE`` assignments: ``READY=1``
once it serves, ``STATUS=...`` as a one-line description that ``systemctl status`` shows,
``STOPPING=1`` when it shuts down, ``RELOADING=1`` while it reloads. The address is a file
system path, or an abstract socket name written with a leading ``@`` (which stands for the
NUL byte of the abstract namespace). Without ``$NOTIFY_SOCKET`` every call is a no-op.

**Socket activation** (``sd_listen_fds``): a service started by a ``.socket`` unit inherits
the listening sockets as fds 3, 4, ... and finds ``$LISTEN_FDS`` (how many),
``$LISTEN_PID`` (the process they are meant for: a child that inherited the environment must
not take them) and optionally ``$LISTEN_FDNAMES`` (colon-separated names, one per fd).

Neither protocol is allowed to take the daemon down: a notification that cannot be sent is
logged once and dropped; only malformed activation variables meant for this very process are
an error, because the service manager would otherwise wait on a socket nobody serves.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence

import attrs

__all__ = [
    "LISTEN_FDS_START",
    "ListenFd",
    "SocketActivationError",
    "adopt_unix_listener",
    "listen_fds",
    "notify",
    "notify_address",
    "notify_ready",
    "notify_reloading",
    "notify_status",
    "notify_stopping",
    "parse_listen_env",
    "send_notifications_through",
]

log = logging.getLogger("fsd")

#: The first inherited fd (``SD_LISTEN_FDS_START``): 0-2 stay stdin, stdout and stderr.
LISTEN_FDS_START = 3

_LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_warned_unsendable = False
#: What sends the notifications instead of this process (:func:`send_notifications_through`).
_sender: Callable[[bytes], None] | None = None


class SocketActivationError(OSError):
    """``$LISTEN_*`` names this process but cannot be used as it stands (sd_listen_fds's
    EINVAL; an OSError so that it is reported like any socket that cannot be opened)."""


# -- readiness ------------------------------------------------------------------------------


def notify_address(value: str) -> str | bytes | None:
    """The socket address ``$NOTIFY_SOCKET`` names: a path, an abstract name (``@x`` becomes
    ``b"\\0x"``), or None for a form this module does not speak (e.g. systemd 254's
    ``vsock:CID:PORT``) or a relative path, which systemd never sends."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + os.fsencode(value[1:])
    return None


def _one_line(value: str) -> str:
    """A value that cannot start a second assignment: a newline in a STATUS built from a file
    name would otherwise let that name say READY=1 or MAINPID=..."""
    return " ".join(value.splitlines())


def notify(*assignments: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``KEY=VALUE`` assignments to the service manager as one datagram.

    Returns True if it was sent, False without ``$NOTIFY_SOCKET`` or when sending failed
    (logged at warning level the first time, then at debug level).
    """
    global _warned_unsendable
    env = os.environ if environ is None else environ
    value = env.get("NOTIFY_SOCKET")
    if not value:
        return False
    address = notify_address(value)
    message = "\n".join(_one_line(item) for item in assignments).encode()
    try:
        if _sender is not None:
            _sender(message)
            return True
        if address is None:
            raise OSError(errno.EAFNOSUPPORT, "unsupported NOTIFY_SOCKET address", value)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Never wait for a service manager that does not read (a full queue): drop it.
            sock.sendto(message, socket.MSG_DONTWAIT, address)
    except OSError as exc:
        level = logging.DEBUG if _warned_unsendable else logging.WARNING
        _warned_unsendable = True
        log.log(level, "cannot notify the service manager at %s: %s", value, exc.strerror)
        return False
    return True


def send_notifications_through(sender: Callable[[bytes], None] | None) -> None:
    """Hand every later notification to ``sender`` (the sandbox's supervisor, which relays
    it from the pid systemd started: a sandboxed server is a child of that pid, and inside
    the sandbox the socket's path does not exist either); None sends them directly again."""
    global _sender
    _sender = sender


def notify_ready(status: str | None = None) -> bool:
    """``READY=1``: the service is up (for fsd serve: its socket listens)."""
    return notify("READY=1", *([f"STATUS={status}"] if status is not None else []))


def notify_status(status: str) -> bool:
    """``STATUS=...``: one line for ``systemctl status``."""
    return notify(f"STATUS={status}")


def notify_stopping(status: str | None = None) -> bool:
    """``STOPPING=1``: the service is shutting down of its own accord or on a signal."""
    return notify("STOPPING=1", *([f"STATUS={status}"] if status is not None else []))


def notify_reloading(status: str | None = None) -> bool:
    """``RELOADING=1`` with the ``MONOTONIC_USEC`` that ``Type=notify-reload`` (systemd 253)
    requires; send :func:`notify_ready` when the reload is done."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    extra = [f"STATUS={status}"] if status is not None else []
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *extra)


# -- socket activation ----------------------------------------------------------------------


@attrs.frozen
class ListenFd:
    """One inherited socket: its fd and the name its ``.socket`` unit gave it
    (``FileDescriptorName=``, "unknown" when unnamed)."""

    fd: int
    name: str


def parse_listen_env(environ: Mapping[str, str], pid: int) -> list[ListenFd]:
    """The fds ``$LISTEN_*`` passes to process ``pid``; [] when they are absent or meant for
    another process. Raises :class:`SocketActivationError` when they name ``pid`` but are
    malformed (no count, a bad count, or a name list of another length)."""
    listen_pid = environ.get("LISTEN_PID")
    if listen_pid is None:
        return []
    try:
        if int(listen_pid) != pid:
            return []
    except ValueError:
        raise SocketActivationError(f"LISTEN_PID={listen_pid!r} is not a process id") from None
    count_text = environ.get("LISTEN_FDS", "")
    try:
        count = int(count_text)
    except ValueError:
        raise SocketActivationError(f"LISTEN_FDS={count_text!r} is not a number") from None
    if count < 0 or count > 4096:
        raise SocketActivationError(f"LISTEN_FDS={count} is out of range")
    names_text = environ.get("LISTEN_FDNAMES")
    if names_text is None:
        names = ["unknown"] * count
    else:
        names = names_text.split(":") if count else []
        if len(names) != count:
            raise SocketActivationError(
                f"LISTEN_FDNAMES names {len(names)} sockets but LISTEN_FDS={count}"
            )
    return [ListenFd(LISTEN_FDS_START + i, name) for i, name in enumerate(names)]


def listen_fds(
    *, unset_environment: bool = True, environ: MutableMapping[str, str] | None = None
) -> list[ListenFd]:
    """The sockets the service manager passed to this process, marked close-on-exec so that
    children do not inherit them; ``$LISTEN_*`` is removed by default for the same reason."""
    env = os.environ if environ is None else environ
    try:
        fds = parse_listen_env(env, os.getpid())
        for item in fds:
            try:
                flags = fcntl.fcntl(item.fd, fcntl.F_GETFD)
                fcntl.fcntl(item.fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
            except OSError:
                raise SocketActivationError(
                    f"LISTEN_FDS passes fd {item.fd}, which is not open"
                ) from None
    finally:
        if unset_environment:
            for name in _LISTEN_VARIABLES:
                env.pop(name, None)
    return fds


def _unix_stream_listener_at(fd: int, path: str) -> socket.socket | None:
    """A socket object for ``fd`` if it is a listening Unix stream socket bound at ``path``
    (sd_is_socket_unix); None otherwise, leaving ``fd`` open."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    try:
        if (
            sock.family == socket.AF_UNIX
            and sock.type == socket.SOCK_STREAM
            and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            and _same_path(sock.getsockname(), path)
        ):
            return sock
    except OSError:
        pass
    sock.close()
    return None


def _same_path(bound: object, path: str) -> bool:
    if isinstance(bound, bytes):  # abstract or undecodable: never a file system path
        return False
    return isinstance(bound, str) and os.path.abspath(bound) == os.path.abspath(path)


def adopt_unix_listener(path: str, fds: Sequence[ListenFd]) -> socket.socket | None:
    """Of the inherited ``fds``, the listening Unix stream socket bound at ``path``, as a
    socket object of its own (a duplicate: the inherited fd is closed). None if no passed
    socket is bound there: the caller binds its own, and a stale socket unit then shows up as
    "address in use"."""
    for item in fds:
        sock = _unix_stream_listener_at(item.fd, path)
        if sock is not None:
            with contextlib.suppress(OSError):
                os.close(item.fd)
            return sock
    if fds:
        log.warning(
            "systemd passed %s, none of them a listening Unix socket at %s",
            ", ".join(f"fd {item.fd} ({item.name})" for item in fds),
            path,
        )
    return None
