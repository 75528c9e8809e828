"""The process left outside a pid namespace: it waits for the sandboxed server (pid 1 inside),
passes signals on, and exits with the server's status.

``unshare(CLONE_NEWPID)`` moves only the caller's future children into the new namespace, so
the namespace sandbox forks once and the server runs in the child. The parent stays the
process the VMM launched (its pid is the one a VMM manager or systemd signals and waits for),
holds nothing (every fd closed, no capabilities) and only:

- forwards SIGTERM, SIGHUP, SIGUSR1, SIGUSR2, and SIGINT/SIGQUIT unless the terminal already
  sent them to the whole process group, server included;
- when the server exits, runs the caller's cleanup (removing the socket file, which is outside
  the server's file system) and exits with the same code, or 128+N if signal N killed it
  (logged, SIGSYS with a hint about seccomp);
- if the parent itself is killed, the server gets SIGKILL (PR_SET_PDEATHSIG), so no orphan is
  left serving a VMM nobody supervises;
- answers the server over a socket pair (:class:`SupervisorChannel`) for the two things only a
  process outside the sandbox can do: relay the server's readiness notifications to systemd
  (which accepts them from the process it started, not from a child, under the default
  ``NotifyAccess=main``), and tell the pid of a connected front-end (SO_PEERCRED says 0 for a
  process outside the server's pid namespace).

Signals are taken with ``sigwaitinfo`` (blocked before the fork, so none is lost in between),
not with handlers: the parent has nothing else to do.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import signal
import socket
import struct
import sys
import threading
from collections.abc import Callable
from typing import Final, NoReturn

from fsd.sandbox import _linux

__all__ = [
    "DEFERRED",
    "FORWARDED",
    "NOTIFY_KEYS",
    "Relay",
    "SupervisorChannel",
    "accept_signals",
    "fork_supervised",
    "hold_signals",
]

log = logging.getLogger("fsd.sandbox")

FORWARDED: Final = frozenset(
    {
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGQUIT,
        signal.SIGHUP,
        signal.SIGUSR1,
        signal.SIGUSR2,
    }
)
_FROM_TERMINAL: Final = frozenset({signal.SIGINT, signal.SIGQUIT})
#: Held back in the server until :func:`accept_signals`.
DEFERRED: Final = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
_SI_KERNEL: Final = 0x80
#: The sd_notify assignments relayed for the server. Not MAINPID=, FDSTORE=, BARRIER= or
#: anything else: a compromised server must not make systemd signal or trust another
#: process, nor hand it fds.
NOTIFY_KEYS: Final = frozenset(
    {"READY", "STATUS", "STOPPING", "RELOADING", "MONOTONIC_USEC", "ERRNO", "WATCHDOG"}
)
_NOTIFY: Final = b"N"
_PEER_PID: Final = b"P"
_MAX_MESSAGE: Final = 4096

#: What relays the server's notification (``KEY=VALUE`` assignments) to the service manager.
Relay = Callable[..., object]


class SupervisorChannel:
    """The server's end of its socket pair with the supervisor."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()  # one question and its answer at a time

    def notify(self, message: bytes) -> None:
        """Relay an sd_notify datagram (``KEY=VALUE`` lines) from the supervisor's pid."""
        self._sock.send(_NOTIFY + message[: _MAX_MESSAGE - 1])

    def peer_pid(self, conn: int) -> int:
        """The host pid of the process at the other end of the connected Unix socket fd
        ``conn``, or 0 if the supervisor cannot tell."""
        with self._lock:
            socket.send_fds(self._sock, [_PEER_PID], [conn])
            answer = self._sock.recv(4)
        return struct.unpack("i", answer)[0] if len(answer) == 4 else 0

    def close(self) -> None:
        self._sock.close()


def fork_supervised(
    cleanup: Callable[[], None] | None,
    drop_privileges: Callable[[], None],
    relay: Relay | None = None,
) -> SupervisorChannel:
    """Fork. Returns in the child, with its line to the supervisor; the parent supervises it
    and never returns.

    ``drop_privileges`` runs in the parent before it waits (it needs none of them);
    ``relay`` is called there with the notification assignments the server sends."""
    waited = FORWARDED | {signal.SIGCHLD, signal.SIGIO}
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    previous_chld = signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # SIG_IGN would reap it
    alive_r, alive_w = os.pipe()
    server_end, supervisor_end = socket.socketpair(
        socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC
    )
    child = os.fork()
    if child != 0:
        os.close(alive_r)
        server_end.close()
        _supervise(child, (alive_w, supervisor_end), cleanup, drop_privileges, relay, waited)
    os.close(alive_w)
    supervisor_end.close()
    # If the parent dies, so does the server. SIGKILL because pid 1 of a namespace ignores
    # any other signal it has no handler for.
    _linux.prctl(_linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    parent_gone, _, _ = select.select([alive_r], [], [], 0)
    if parent_gone:  # it died before PR_SET_PDEATHSIG was in place
        os._exit(1)
    os.close(alive_r)
    signal.signal(signal.SIGCHLD, previous_chld)
    # SIGTERM, SIGINT and SIGHUP stay blocked (pending, not lost) until the server's own
    # handlers are in place (accept_signals): pid 1 of a pid namespace would ignore one it
    # has no handler for, and a handler meanwhile could only end the start-up abruptly.
    signal.pthread_sigmask(signal.SIG_SETMASK, set(previous_mask) | DEFERRED)
    return SupervisorChannel(server_end)


def hold_signals() -> None:
    """Block SIGTERM, SIGINT and SIGHUP until :func:`accept_signals`: once the command line
    has bound its sockets, an early signal must end the daemon through its handlers (which
    remove the socket files), not by the default action half-way through start-up."""
    signal.pthread_sigmask(signal.SIG_BLOCK, DEFERRED)


def accept_signals() -> None:
    """Let the signals the sandboxed start-up held back in (a no-op where none were): call
    it once the process handles SIGTERM, SIGINT and SIGHUP itself."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, DEFERRED)


def _supervise(
    child: int,
    kept: tuple[int, socket.socket],
    cleanup: Callable[[], None] | None,
    drop_privileges: Callable[[], None],
    relay: Relay | None,
    waited: frozenset[signal.Signals],
) -> NoReturn:
    status = 1
    alive_w, channel = kept
    try:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        # The child has its own copies; the parent keeping a listening socket open would
        # let a second VMM connect to a queue nobody accepts from.
        low, high = sorted((alive_w, channel.fileno()))
        os.closerange(3, low)
        os.closerange(low + 1, high)
        os.closerange(high + 1, os.sysconf("SC_OPEN_MAX"))
        try:
            drop_privileges()
        except OSError as exc:
            log.warning("sandbox: the supervising process keeps its privileges: %s", exc)
        # No thread can wait on the channel (a process that unshared its pid namespace
        # cannot start one): the kernel signals SIGIO when the server wrote to it, taken
        # with the other signals.
        channel.setblocking(False)
        fcntl.fcntl(channel, fcntl.F_SETOWN, os.getpid())
        fcntl.fcntl(channel, fcntl.F_SETFL, fcntl.fcntl(channel, fcntl.F_GETFL) | os.O_ASYNC)
        _answer(channel, relay)  # what it sent before O_ASYNC was set
        status = _wait(child, waited, lambda: _answer(channel, relay))
        if cleanup is not None:
            cleanup()
    except BaseException:
        log.exception("sandbox: the supervising process failed")
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(status)


def _answer(channel: socket.socket, relay: Relay | None) -> None:
    """Answer what the server sent, until nothing is left to read."""
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(channel, _MAX_MESSAGE, 1)
        except OSError:  # BlockingIOError: all read; or the server is gone
            return
        if not message:
            return
        try:
            kind, body = message[:1], message[1:]
            if kind == _NOTIFY and relay is not None:
                assignments = _allowed_assignments(body)
                if assignments:
                    relay(*assignments)
            elif kind == _PEER_PID:
                channel.send(struct.pack("i", _peer_pid(fds[0]) if fds else 0))
        except Exception:
            log.exception("sandbox: the supervisor could not answer the server")
        finally:
            for fd in fds:
                os.close(fd)


def _allowed_assignments(body: bytes) -> list[str]:
    lines = body.decode(errors="replace").split("\n")
    return [line for line in lines if line.partition("=")[0] in NOTIFY_KEYS]


def _peer_pid(fd: int) -> int:
    try:
        with socket.socket(fileno=os.dup(fd)) as conn:
            if conn.family != socket.AF_UNIX:
                return 0
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    except OSError:
        return 0
    pid: int = struct.unpack("3i", creds)[0]
    return pid


def _wait(child: int, waited: frozenset[signal.Signals], on_io: Callable[[], None]) -> int:
    while True:
        info = signal.sigwaitinfo(waited)
        signum = info.si_signo
        if signum == signal.SIGIO:
            on_io()
            continue
        if signum == signal.SIGCHLD:
            pid, wait_status = os.waitpid(child, os.WNOHANG)
            if pid == child:
                return _exit_code(wait_status)
            continue
        if signum in _FROM_TERMINAL and info.si_code == _SI_KERNEL:
            continue  # the terminal signalled the whole process group, the server too
        with contextlib.suppress(ProcessLookupError):  # exiting: its SIGCHLD is on the way
            os.kill(child, signum)


def _exit_code(wait_status: int) -> int:
    if os.WIFEXITED(wait_status):
        return os.WEXITSTATUS(wait_status)
    signum = os.WTERMSIG(wait_status)
    name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else signum
    hint = " (a system call outside the seccomp allowlist)" if signum == signal.SIGSYS else ""
    log.error("sandbox: the server was killed by signal %s%s", name, hint)
    return 128 + signum
