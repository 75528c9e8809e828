"""Run ``fsd serve`` as a real process, the way a VMM's launcher does, for tests."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from fsd.testing.guest import unix_socket_listening

__all__ = ["ServeProcess"]


class ServeProcess:
    """``python -m fsd serve`` on ``shared_dir``, started and waited for until its socket exists."""

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
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *module.split(), "--socket-path", str(socket_path),
             "--shared-dir", str(shared_dir), "--log-level", "debug", *extra],
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while _inode(socket_path) in (None, stale) or not unix_socket_listening(socket_path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fsd serve did not start: {self.stop()[1]}")
            time.sleep(0.02)

    def stop(self, sig: int | None = signal.SIGTERM) -> tuple[int, str]:
        """Send ``sig`` (None: just wait for the exit) and return (exit status, stderr)."""
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err


def _inode(path: Path) -> tuple[int, int] | None:
    """Identity of the file at ``path``, told apart from a stale one it replaced."""
    try:
        st = path.stat()
        return st.st_ino, st.st_ctime_ns
    except FileNotFoundError:
        return None
