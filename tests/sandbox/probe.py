"""A process that enters the sandbox and reports what it can see, for tests/sandbox/.

    python -m tests.sandbox.probe MODE SECCOMP SHARE [--modcaps M] [--then wait|forbidden|exit]

Prints one JSON line on stdout once inside, then: ``wait`` blocks until stdin closes (so the
test can look at /proc/<host_pid>), ``forbidden`` makes a system call that is not on the
allowlist and reports what came back, ``exit`` just exits. The supervisor's cleanup (namespace
mode) writes ``cleanup ran`` on stderr.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import logging
import os
import select
import signal
import socket
import sys

from fsd.sandbox import (
    HostPath,
    SandboxConfig,
    SandboxError,
    SandboxMode,
    SeccompAction,
    accept_signals,
    enter_sandbox,
)
from fsd.sandbox._linux import CLONE_FS

FORBIDDEN_SYSCALL = "getpriority"
CLONE_NEWUTS = 0x0400_0000


def _look(path: str) -> object:
    """What ``path`` is from inside: a directory listing, 'file', or the errno name."""
    try:
        if os.path.isdir(path):
            return sorted(os.listdir(path))
        with open(path, "rb"):
            return "file"
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=[m.value for m in SandboxMode])
    parser.add_argument("seccomp", choices=[a.value for a in SeccompAction])
    parser.add_argument("share")
    parser.add_argument("--modcaps")
    parser.add_argument("--keep", action="append", default=[], help="PATH or PATH:rw")
    parser.add_argument("--supervisor-keeps", action="append", default=[])
    parser.add_argument("--then", default="exit", choices=["wait", "forbidden", "unshare", "exit"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    marker = os.open(os.path.join(args.share, "marker"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        sandbox = enter_sandbox(
            SandboxConfig(
                args.share,
                SandboxMode(args.mode),
                SeccompAction(args.seccomp),
                modcaps=args.modcaps,
                extra_paths=[
                    HostPath(path.removesuffix(":rw"), writable=path.endswith(":rw"))
                    for path in args.keep
                ],
                supervisor_capabilities=frozenset(args.supervisor_keeps),
            ),
            cleanup=lambda: print("cleanup ran", file=sys.stderr, flush=True),
        )
    except SandboxError as exc:
        print(f"SandboxError: {exc}", file=sys.stderr)
        return 1
    share = sandbox.shared_dir
    names = sorted(os.listdir(share))
    report = {
        "host_pid": sandbox.host_pid,
        "pid": os.getpid(),
        "shared_dir": share,
        "capabilities": sorted(sandbox.capabilities),
        "root": _look("/"),
        "share": names,
        "links": {
            name: _look(os.path.join(share, name)) for name in names if name.startswith("link")
        },
        "etc": _look("/etc"),
        "proc": _look("/proc"),
    }
    # fsd's way of reopening an inode: its magic link in the fd directory the sandbox kept.
    reopened = os.open(str(marker), os.O_RDONLY, dir_fd=sandbox.proc_self_fd)
    report["reopened"] = os.fstat(reopened).st_ino == os.fstat(marker).st_ino
    kept: dict[str, str] = {}
    for path in (p.removesuffix(":rw") for p in args.keep):
        target = os.path.join(path, "written") if os.path.isdir(path) else path
        try:
            with open(target, "a") as f:
                f.write("from the sandbox\n")
            kept[path] = "written"
        except OSError as exc:
            kept[path] = errno.errorcode.get(exc.errno or 0, str(exc))
    report["kept"] = kept
    print(json.dumps(report), flush=True)
    if args.then == "wait":
        _wait_for_stdin_or_sigterm()
    elif args.then == "forbidden":
        value = os.getpriority(os.PRIO_PROCESS, 0)
        print(json.dumps({"forbidden_returned": value}), flush=True)
    elif args.then == "unshare":
        # A thread's own umask (fsd.fs.umask) is allowed; any other unshare is not.
        libc = ctypes.CDLL(None, use_errno=True)
        print(json.dumps({"unshare_fs": libc.unshare(CLONE_FS)}), flush=True)
        value = libc.unshare(CLONE_FS | CLONE_NEWUTS)
        print(json.dumps({"forbidden_returned": value}), flush=True)
    return 0


def _wait_for_stdin_or_sigterm() -> None:
    """As a server does: take SIGTERM itself (pid 1 of a pid namespace would ignore it
    otherwise), then let in the signals the sandbox held back. A signal that lands just
    before a blocking read would not interrupt it, so wait on a wakeup fd too, as trio does
    (with the calls the seccomp allowlist has: a socket pair and epoll)."""
    wake_r, wake_w = socket.socketpair()
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    signal.signal(signal.SIGTERM, _exit_on_signal)
    accept_signals()
    with select.epoll() as poller:
        poller.register(sys.stdin.fileno(), select.EPOLLIN | select.EPOLLHUP)
        poller.register(wake_r.fileno(), select.EPOLLIN)
        while True:
            for fd, _ in poller.poll():
                if fd == sys.stdin.fileno():
                    return  # stdin has data or was closed: the test is done with us
                wake_r.recv(64)  # the handler has run, or runs right after this


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    raise SystemExit(main())
