"""The guest caller's umask, applied by the host kernel when POSIX ACLs are on.

With POSIX ACLs the client does not apply the caller's umask to a new file's mode but sends
it (DONT_MASK), because a default ACL on the parent directory replaces the umask, and only the
host kernel knows at the moment it creates the file which of the two applies. So the creating
syscall runs with the caller's umask, and the kernel does the rest as for a local process.

The process umask stays 0 (:func:`fsd.cli.process.prepare_process`): other creating calls
rely on it. A serving thread first gives itself a umask of its own with ``unshare(CLONE_FS)``
(as virtiofsd's worker threads do; the seccomp filter allows that flag and no other), then
sets the caller's around the one call and puts 0 back.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Final

from fsd.fs.linux import CLONE_FS, unshare

__all__ = ["UmaskPolicy", "caller_umask", "umask_policy"]

_UNCHANGED: Final = contextlib.nullcontext()
_threads: Final = threading.local()

UmaskPolicy = Callable[[int], AbstractContextManager[None]]
"""Given a request's umask, the block its creating syscall runs in."""


class _CallerUmask:
    """The context of :func:`caller_umask`."""

    __slots__ = ("_umask",)

    def __init__(self, umask: int) -> None:
        self._umask = umask

    def __enter__(self) -> None:
        if not getattr(_threads, "own_umask", False):
            unshare(CLONE_FS)
            _threads.own_umask = True
        os.umask(self._umask)

    def __exit__(self, *exc_info: object) -> None:
        os.umask(0)


def caller_umask(umask: int) -> AbstractContextManager[None]:
    """Run a creating call with ``umask`` as this thread's umask (DONT_MASK granted)."""
    if not umask:
        return _UNCHANGED  # the thread's umask is already 0
    return _CallerUmask(umask & 0o777)


def _ignored(_umask: int) -> AbstractContextManager[None]:
    return _UNCHANGED


def umask_policy(posix_acl: bool) -> UmaskPolicy:
    """:func:`caller_umask` with POSIX ACLs; otherwise the client has applied the umask to the
    mode already, and the process umask of 0 keeps the mode as sent."""
    return caller_umask if posix_acl else _ignored
