"""A plugin that makes a system call outside the seccomp allowlist when the guest looks up
the name ``forbidden``: what a compromised or careless plugin would do inside the daemon."""

from __future__ import annotations

import os

from fsd.hookinfo import FuseRequestInfo
from fsd.hookspecs import hookimpl
from tests.sandbox.probe import FORBIDDEN_SYSCALL

assert FORBIDDEN_SYSCALL == "getpriority"


class ForbiddenCall:
    @hookimpl
    def fsd_fuse_check(self, request: FuseRequestInfo) -> int | None:
        if request.name == "forbidden":
            os.getpriority(os.PRIO_PROCESS, 0)
        return None


plugin = ForbiddenCall()
