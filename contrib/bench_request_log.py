"""fsd plugin for the benchmarks' counting pass: one line per FUSE request, its opcode name.

``fsd serve --plugin bench_request_log:plugin`` with contrib/ on PYTHONPATH and
``FSD_BENCH_REQUEST_LOG`` naming the file. The audit hook sees every request, FORGETs
included; each line is one ``write(2)`` to an ``O_APPEND`` file, so the host can count the
requests between two of the guest's steps while the daemon runs. The file is opened at
start-up (``fsd_configure``), before the sandbox: inside it the path no longer exists. The
references count theirs from their debug logs; neither way is used in a timed run.
"""

from __future__ import annotations

import os

from fsd.hookinfo import FuseRequestInfo
from fsd.hookspecs import hookimpl
from fsd.plugins import PluginConfig

ENV = "FSD_BENCH_REQUEST_LOG"


class RequestLog:
    """Appends ``OPCODE NAME\\n`` per request to the file named by ``$FSD_BENCH_REQUEST_LOG``."""

    def __init__(self) -> None:
        self.fd: int | None = None

    def _open(self) -> int:
        path = os.environ.get(ENV)
        if not path:
            raise RuntimeError(f"bench_request_log: set {ENV} to the file to append to")
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self.fd = os.open(path, flags, 0o644)
        return self.fd

    @hookimpl
    def fsd_configure(self, config: PluginConfig) -> None:
        self._open()

    @hookimpl
    def fsd_fuse_audit(self, request: FuseRequestInfo, error: int, bytes_moved: int) -> None:
        fd = self.fd if self.fd is not None else self._open()
        os.write(fd, f"{request.opcode} {request.op}\n".encode())


plugin = RequestLog()
