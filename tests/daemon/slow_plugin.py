"""A plugin whose check hook stalls on GETATTR: loaded by test_slow_plugin.py in fsd serve."""

from __future__ import annotations

import time

from fsd.hookinfo import FuseRequestInfo
from fsd.hookspecs import hookimpl


class SlowPlugin:
    @hookimpl
    def fsd_fuse_check(self, request: FuseRequestInfo) -> int | None:
        if request.op == "GETATTR":
            time.sleep(2.0)
        return None


plugin = SlowPlugin()
