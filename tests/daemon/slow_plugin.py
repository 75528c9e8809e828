"""A plugin whose check hooks stall (GETATTR, allowlist changes): loaded by test_slow_plugin.py."""

from __future__ import annotations

import time

from fsd.allowlist.handler import AllowlistChange
from fsd.hookinfo import FuseRequestInfo
from fsd.hookspecs import hookimpl


class SlowPlugin:
    @hookimpl
    def fsd_fuse_check(self, request: FuseRequestInfo) -> int | None:
        if request.op == "GETATTR":
            time.sleep(2.0)
        return None

    @hookimpl
    def fsd_allowlist_check(self, change: AllowlistChange) -> str | None:
        time.sleep(2.0)
        return None


plugin = SlowPlugin()
