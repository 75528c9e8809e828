"""The kernel log lines written after a point in time, read from /dev/kmsg.

Counting ``dmesg`` lines before and after does not work once the kernel's ring buffer is full
(on a machine up for a day it is): every new line pushes an old one out, the count stays the
same and the new lines are never looked at. /dev/kmsg gives each reader its own position, so
seeking to its end and reading from there yields exactly the records written since.
"""

from __future__ import annotations

import errno
import os
from types import TracebackType


class KernelLogFollower:
    """Open /dev/kmsg at its end; :meth:`new_lines` returns the messages written since.

    Needs the right to read the kernel log (root, or ``kernel.dmesg_restrict=0``); opening
    raises OSError otherwise.
    """

    def __init__(self) -> None:
        self._fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.lseek(self._fd, 0, os.SEEK_END)

    def new_lines(self) -> list[str]:
        """The messages logged since the last call (or since opening), oldest first."""
        lines: list[str] = []
        while True:
            try:
                record = os.read(self._fd, 8192)
            except BlockingIOError:
                return lines
            except OSError as error:
                if error.errno == errno.EPIPE:  # overwritten before we read it: skip on
                    continue
                raise
            # "priority,sequence,microseconds,flags;message\n" then optional " KEY=value" lines
            text = record.decode(errors="replace").partition(";")[2]
            lines.append(text.split("\n", 1)[0])

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> KernelLogFollower:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
