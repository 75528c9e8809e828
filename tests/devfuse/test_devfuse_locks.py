"""fcntl and flock locks through ``fsd mount``: real processes on the host kernel's FUSE.

The mount user's locks become host locks held by fsd, so they conflict with other processes
on the mount and with host processes using the shared file directly.
"""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsd.testing.mount import Mount

# A lock holder in its own process: takes the lock, says so, waits for a line, then either
# closes the file (dropping the lock) or exits.
_HOLDER = """
import fcntl, struct, sys
path, how = sys.argv[1], sys.argv[2]
f = open(path, "r+b")
if how == "lockf":
    fcntl.lockf(f, fcntl.LOCK_EX, 100, 0)
elif how == "flock":
    fcntl.flock(f, fcntl.LOCK_EX)
elif how == "wait":  # blocks until the lock is free; a signal interrupts it
    import signal
    def stop(*_): raise KeyboardInterrupt
    signal.signal(signal.SIGUSR1, stop)
    print("waiting", flush=True)
    try:
        fcntl.lockf(f, fcntl.LOCK_EX)
        print("granted", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    sys.exit(0)
print("locked", flush=True)
sys.stdin.readline()
f.close()
print("closed", flush=True)
sys.stdin.readline()
"""


class Holder:
    """A child process holding a lock on ``path``."""

    def __init__(self, path: Path, how: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(path), how],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.stdout = self.proc.stdout
        self.stdin = self.proc.stdin

    def expect(self, word: str) -> None:
        assert self.stdout.readline().strip() == word

    def step(self) -> None:
        self.stdin.write("\n")
        self.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.stdin.close()
        self.stdout.close()


@pytest.fixture
def lock_file(fsd_mount: Mount) -> Path:
    path = fsd_mount.mountpoint / "locked"
    path.write_bytes(b"x" * 200)
    return path


@pytest.fixture
def holder(lock_file: Path) -> Iterator[list[Holder]]:
    made: list[Holder] = []
    yield made
    for h in made:
        h.close()


def _start(holders: list[Holder], path: Path, how: str, ready: str = "locked") -> Holder:
    h = Holder(path, how)
    holders.append(h)
    h.expect(ready)
    return h


def _getlk(path: Path) -> tuple[int, int, int, int]:
    """F_GETLK for a whole-file write lock: (type, start, len, pid)."""
    with open(path, "r+b") as f:
        got = fcntl.fcntl(f, fcntl.F_GETLK, struct_flock(fcntl.F_WRLCK, 0, 0))
    l_type, _, l_start, l_len, l_pid = _FLOCK.unpack(got)
    return l_type, l_start, l_len, l_pid


_FLOCK = struct.Struct("hh4xqqi4x")


def struct_flock(kind: int, start: int, length: int) -> bytes:
    return _FLOCK.pack(kind, os.SEEK_SET, start, length, 0)


def test_processes_conflict_and_getlk_names_the_holder(
    lock_file: Path, holder: list[Holder]
) -> None:
    h = _start(holder, lock_file, "lockf")
    with open(lock_file, "r+b") as f:
        with pytest.raises(OSError):  # noqa: PT011  EAGAIN or EACCES, both mean "held"
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 50)
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 150)  # past the held range
    assert _getlk(lock_file) == (fcntl.F_WRLCK, 0, 100, h.proc.pid)


def test_close_releases_and_a_waiter_gets_the_lock(lock_file: Path, holder: list[Holder]) -> None:
    h = _start(holder, lock_file, "lockf")
    granted = threading.Event()

    def wait_for_lock() -> None:
        with open(lock_file, "r+b") as f:
            fcntl.lockf(f, fcntl.LOCK_EX)  # SETLKW: deferred by fsd until the holder closes
            granted.set()

    waiter = threading.Thread(target=wait_for_lock)
    waiter.start()
    time.sleep(0.2)
    assert not granted.is_set()
    assert (lock_file.parent / "other").exists() is False  # the mount still answers
    h.step()
    h.expect("closed")  # close(2), not exit: FLUSH drops the owner's locks
    waiter.join(10)
    assert granted.is_set()


def test_host_process_and_mount_user_conflict(
    lock_file: Path, share: Path, holder: list[Holder]
) -> None:
    _start(holder, share / "locked", "lockf")  # on the host file, not through the mount
    with open(lock_file, "r+b") as f, pytest.raises(OSError):  # noqa: PT011
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
    l_type, l_start, l_len, l_pid = _getlk(lock_file)
    assert (l_type, l_start, l_len) == (fcntl.F_WRLCK, 0, 100)
    assert l_pid == 0  # held by a host process, not by anyone on this mount


def test_mount_user_blocks_a_host_process(lock_file: Path, share: Path) -> None:
    with open(lock_file, "r+b") as f:
        fcntl.lockf(f, fcntl.LOCK_SH)
        with open(share / "locked", "r+b") as host:
            with pytest.raises(OSError):  # noqa: PT011
                fcntl.lockf(host, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.lockf(host, fcntl.LOCK_SH | fcntl.LOCK_NB)
    with open(share / "locked", "r+b") as host:
        fcntl.lockf(host, fcntl.LOCK_EX | fcntl.LOCK_NB)  # closed on the mount: released


def test_flock_conflicts_with_mount_and_host(
    lock_file: Path, share: Path, holder: list[Holder]
) -> None:
    h = _start(holder, lock_file, "flock")
    for path in (lock_file, share / "locked"):
        with open(path, "rb") as f, pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
    h.step()
    h.expect("closed")
    with open(lock_file, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)


def test_a_signal_interrupts_a_waiting_lock(lock_file: Path, holder: list[Holder]) -> None:
    with open(lock_file, "r+b") as f:
        fcntl.lockf(f, fcntl.LOCK_EX)
        w = _start(holder, lock_file, "wait", ready="waiting")
        time.sleep(0.2)
        w.proc.send_signal(signal.SIGUSR1)  # the kernel sends INTERRUPT; fsd answers EINTR
        w.expect("interrupted")
        assert w.proc.wait(10) == 0
        killed = _start(holder, lock_file, "wait", ready="waiting")
        time.sleep(0.2)
        killed.proc.kill()  # without INTERRUPT support this process could never die
        assert killed.proc.wait(10) == -signal.SIGKILL
