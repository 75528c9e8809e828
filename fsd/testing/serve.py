"""Run ``fsd serve`` as a real process, the way a VMM's launcher does, for tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from fsd.testing.guest import unix_socket_listening

__all__ = ["ServeProcess", "server_pid"]


def server_pid(pid: int) -> int:
    """The process that serves for the ``fsd serve`` (or ``fsd mount``) started as ``pid``:
    in namespace and chroot modes its sandboxed child (``pid`` only supervises it), else
    ``pid`` itself."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return pid
    return int(children[0]) if children else pid


class ServeProcess:
    """``python -m fsd serve`` on ``shared_dir``, started and waited for until it is ready:
    its socket listens and it said READY=1 the way it tells systemd (the socket is bound
    before the sandbox, so listening alone does not say the server runs yet)."""

    def __init__(
        self,
        shared_dir: Path,
        socket_path: Path,
        *extra: str,
        module: str = "fsd serve",
    ) -> None:
        """``module``: what ``python -m`` runs (a module and its command words) with fsd
        serve's arguments (a test's own entry point, for options the CLI lacks)."""
        self.socket_path = socket_path
        stale = _inode(socket_path)
        # Kept until stop(): the daemon notifies again when it stops.
        self._notify_dir = tempfile.TemporaryDirectory(prefix="fsd-notify-")
        notify_path = f"{self._notify_dir.name}/notify"
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._notify.bind(notify_path)
        self._notify.settimeout(0.02)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *module.split(), "--socket-path", str(socket_path),
             "--shared-dir", str(shared_dir), "--log-level", "debug", *extra],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "NOTIFY_SOCKET": notify_path},
        )  # fmt: skip
        self._wait_ready(self._notify, stale)
        # Read what it says later, as a service manager does: unread, its queue would fill.
        self._stopped = threading.Event()
        threading.Thread(target=self._drain, name="fsd-test-notify", daemon=True).start()

    def _drain(self) -> None:
        while not self._stopped.is_set():
            try:
                self._notify.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return

    def _wait_ready(self, notify: socket.socket, stale: tuple[int, int] | None) -> None:
        deadline = time.monotonic() + 20
        ready = False
        while not ready or _inode(self.socket_path) in (None, stale):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fsd serve did not start: {self.stop()[1]}")
            if ready:
                time.sleep(0.02)
                continue
            with contextlib.suppress(TimeoutError):
                ready = b"READY=1" in notify.recv(4096).split(b"\n")
        assert unix_socket_listening(self.socket_path)

    @property
    def server_pid(self) -> int:
        """The process that serves: in namespace and chroot modes the sandboxed child of
        the one started (which only supervises it), else that one."""
        return server_pid(self.proc.pid)

    def stop(self, sig: int | None = signal.SIGTERM) -> tuple[int, str]:
        """Send ``sig`` (None: just wait for the exit) and return (exit status, stderr)."""
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if hasattr(self, "_stopped"):
            self._stopped.set()
        self._notify.close()
        self._notify_dir.cleanup()
        return self.proc.returncode, err


def _inode(path: Path) -> tuple[int, int] | None:
    """Identity of the file at ``path``, told apart from a stale one it replaced."""
    try:
        st = path.stat()
        return st.st_ino, st.st_ctime_ns
    except FileNotFoundError:
        return None
