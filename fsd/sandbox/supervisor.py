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
  left serving a VMM nobody supervises.

Signals are taken with ``sigwaitinfo`` (blocked before the fork, so none is lost in between),
not with handlers: the parent has nothing else to do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
from collections.abc import Callable
from typing import Final, NoReturn

from fsd.sandbox import _linux

__all__ = ["FORWARDED", "fork_supervised"]

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
_SI_KERNEL: Final = 0x80


def fork_supervised(
    cleanup: Callable[[], None] | None, drop_privileges: Callable[[], None]
) -> None:
    """Fork. Returns in the child; the parent supervises it and never returns.

    ``drop_privileges`` runs in the parent before it waits (it needs none of them)."""
    waited = FORWARDED | {signal.SIGCHLD}
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    previous_chld = signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # SIG_IGN would reap it
    alive_r, alive_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(alive_w)
        # If the parent dies, so does the server. SIGKILL because pid 1 of a namespace
        # ignores any other signal it has no handler for.
        _linux.prctl(_linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        parent_gone, _, _ = select.select([alive_r], [], [], 0)
        if parent_gone:  # it died before PR_SET_PDEATHSIG was in place
            os._exit(1)
        os.close(alive_r)
        signal.signal(signal.SIGCHLD, previous_chld)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        return
    os.close(alive_r)
    _supervise(child, alive_w, cleanup, drop_privileges, waited)


def _supervise(
    child: int,
    keep_fd: int,
    cleanup: Callable[[], None] | None,
    drop_privileges: Callable[[], None],
    waited: frozenset[signal.Signals],
) -> NoReturn:
    status = 1
    try:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        # The child has its own copies; the parent keeping a listening socket open would
        # let a second VMM connect to a queue nobody accepts from.
        os.closerange(3, keep_fd)
        os.closerange(keep_fd + 1, os.sysconf("SC_OPEN_MAX"))
        try:
            drop_privileges()
        except OSError as exc:
            log.warning("sandbox: the supervising process keeps its privileges: %s", exc)
        status = _wait(child, waited)
        if cleanup is not None:
            cleanup()
    except BaseException:
        log.exception("sandbox: the supervising process failed")
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(status)


def _wait(child: int, waited: frozenset[signal.Signals]) -> int:
    while True:
        info = signal.sigwaitinfo(waited)
        signum = info.si_signo
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
