#!/usr/bin/env python3
"""What plugin hooks cost per FUSE request: GETATTR and a 4 KiB READ, in process.

Each request goes through ``FuseServer.handle`` on a real PassthroughFs (real syscalls), either
directly (what the daemon uses when no plugin implements a FUSE hook) or through
:class:`fsd.hooks_fuse.HookedHandler` with a plugin set. Prints the best of ``--repeat`` runs
of ``--number`` requests, in µs per request, as a Markdown table.

    .venv/bin/python contrib/bench_hooks.py [--number 10000] [--repeat 15]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fsd_access_policy import AccessPolicy
from fsd_audit_log import AuditLog

from fsd.fs import FsOptions, PassthroughFs
from fsd.fuse.server import FuseServer
from fsd.hookinfo import FuseRequestInfo
from fsd.hooks_fuse import make_request_handler
from fsd.hookspecs import hookimpl
from fsd.plugins import Plugins
from fsd.sgbuf import Segments
from fsd.testing import fuse_requests as fr
from fsd.testing.fuse_requests import FuseClient
from fsd.testing.plugins import plugin_manager

POLICY = """
read_only = ["/archive", "/etc"]
deny = ["/secret", "*.key", "*/.ssh"]
write_allowed = ["/scratch", "/bench"]

[[uid]]
uid = 1000
read_only = true

[rate.write]
per_second = 1000000
burst = 1000000
"""


class Noop:
    """Implements both FUSE hooks and does nothing: the wrapper's own cost."""

    @hookimpl
    def fsd_fuse_check(self, request: FuseRequestInfo) -> int | None:
        return None

    @hookimpl
    def fsd_fuse_audit(self, request: FuseRequestInfo, error: int, bytes_moved: int) -> None:
        return None


def time_requests(handler: Callable[[Segments, Segments], int], data: bytes, n: int) -> float:
    """Seconds for ``n`` round trips of ``data`` (a new segment list each time, as a queue)."""
    request = memoryview(data)
    reply = memoryview(bytearray(4096 + 64))
    start = time.perf_counter()
    for _ in range(n):
        handler([request], [reply])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fsd-bench-"))
    share = tmp / "share"
    (share / "bench").mkdir(parents=True)
    (share / "bench" / "data").write_bytes(os.urandom(1 << 20))
    (tmp / "policy.toml").write_text(POLICY)
    os.umask(0)
    fs = PassthroughFs(share, FsOptions())
    server = FuseServer(fs)
    client = FuseClient(server)
    client.init()
    d = client.lookup(1, "bench")
    f = client.lookup(d.nodeid, "data")
    fh = client.open(f.nodeid)
    getattr_req = fr.getattr(100, f.nodeid)
    read_req = fr.read(102, f.nodeid, fh, 8192, 4096)

    def audit(classes: str) -> Plugins:
        options = {"path": str(tmp / "audit.jsonl"), "classes": classes, "max_bytes": "50000000"}
        return plugin_manager(AuditLog(), options={"audit-log": options})

    def policy() -> Plugins:
        options = {"access-policy": {"rules": str(tmp / "policy.toml")}}
        return plugin_manager(AccessPolicy(), options=options)

    setups: list[tuple[str, Plugins | None]] = [
        ("FuseServer.handle (no plugins)", None),
        ("make_request_handler, plugin without FUSE hooks", plugin_manager(object())),
        ("HookedHandler + no-op check and audit", plugin_manager(Noop())),
        ("HookedHandler + audit-log (classes=all, file)", audit("all")),
        ("HookedHandler + audit-log (default classes: filtered out)", audit("write+namespace")),
        ("HookedHandler + access-policy", policy()),
    ]
    handlers = [make_request_handler(server, plugins) for _, plugins in setups]
    requests = (getattr_req, read_req)
    best = [[float("inf")] * len(requests) for _ in setups]
    # Interleaved rounds: a busy or frequency-scaling machine slows every setup alike.
    for _ in range(args.repeat):
        for i, handler in enumerate(handlers):
            for j, data in enumerate(requests):
                best[i][j] = min(best[i][j], time_requests(handler, data, args.number))
    print("| setup | GETATTR µs | READ 4 KiB µs |\n|---|---:|---:|")
    for (label, _), row in zip(setups, best, strict=True):
        print(f"| {label} | {row[0] / args.number * 1e6:.2f} | {row[1] / args.number * 1e6:.2f} |")
    fs.close()


if __name__ == "__main__":
    main()
