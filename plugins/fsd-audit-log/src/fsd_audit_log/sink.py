"""An append-only JSON-lines file with size-based rotation (or stderr).

Each line goes out in one ``write(2)`` on an ``O_APPEND`` descriptor: no Python buffer to lose
on a crash, and lines from several processes never interleave. Rotation renames
``log`` → ``log.1`` → ``log.2`` ... and drops the oldest, like ``logging.RotatingFileHandler``.

One lock serializes writing, rotating, reopening and closing: audit hooks run on several
queue threads at once and ``fsd_reload`` on the daemon's thread. Unlocked, two threads
rotated at once, wrote to a descriptor the other had closed, and closed it twice; by then
the number may name a file the daemon opened for the guest.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Final

__all__ = ["Sink"]

_FLAGS: Final = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


class Sink:
    """Where audit lines go: ``path`` (``"-"`` is stderr), rotated past ``max_bytes`` (0: never)."""

    def __init__(self, path: str, *, max_bytes: int = 0, backups: int = 3, mode: int = 0o600):
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.mode = mode
        self._fd = -1
        self._size = 0
        self._lock = threading.Lock()
        self.open()

    @property
    def is_stderr(self) -> bool:
        return self.path == "-"

    def open(self) -> None:
        """(Re)open the file: after an outside rotation (SIGHUP → ``fsd_reload``) too."""
        with self._lock:
            self._open()

    def write(self, line: bytes) -> None:
        """Append one line (with its newline); rotate first if it would overflow.

        A closed sink drops the line: an audit call may still be running on a queue thread
        while the daemon stops.
        """
        with self._lock:
            if self._fd < 0:
                return
            size = self._size
            if self.max_bytes and size and size + len(line) > self.max_bytes:
                self._rotate()
            os.write(self._fd, line)
            self._size += len(line)

    def rotate(self) -> None:
        """Shift ``path.N`` up by one, move ``path`` to ``path.1``, start an empty ``path``."""
        with self._lock:
            self._rotate()

    def close(self) -> None:
        """Close the file (never stderr); writes after this are dropped."""
        with self._lock:
            self._close()

    # --- callers hold the lock -------------------------------------------------------------

    def _open(self) -> None:
        self._close()
        if self.is_stderr:
            self._fd = 2
            return
        self._fd = os.open(self.path, _FLAGS, self.mode)
        self._size = os.fstat(self._fd).st_size

    def _rotate(self) -> None:
        if self.is_stderr:
            return
        self._close()
        if self.backups <= 0:
            os.unlink(self.path)
        else:
            for n in range(self.backups - 1, 0, -1):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(f"{self.path}.{n}", f"{self.path}.{n + 1}")
            os.replace(self.path, f"{self.path}.1")
        self._open()

    def _close(self) -> None:
        if self._fd > 2:
            os.close(self._fd)
        self._fd = -1
        self._size = 0
