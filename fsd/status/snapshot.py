"""What a running daemon is doing, as one JSON document (``fsd status --json``).

:class:`DaemonStatus` holds references to the daemon's live parts (the FUSE server, the
filesystem's tables, the allowlist, the plugins, the vhost-user connection); the daemon
fills them in as they come and go. :meth:`DaemonStatus.snapshot` reads them when someone
asks, on the trio thread: the request path keeps its plain counters and never sees the
status view. Counters read while queue threads bump them are a moment's values, each exact
or at most a request behind.

The document's fields are described in docs/status.md; ``schema`` changes when one changes
meaning or goes away (new fields may appear without it).
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Sized
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import attrs

from fsd.allowlist.paths import format_path
from fsd.fuse.abi import InitFlag, op_name
from fsd.status.latency import BOUNDS_NS, RequestLatency
from fsd.vhost_user.messages import ProtocolFeatures, VirtioFeatures

if TYPE_CHECKING:
    from fsd.allowlist.trie import Allowlist
    from fsd.daemon.vhost_conn import VhostUserConnection
    from fsd.fuse.server import FuseServer
    from fsd.hookinfo import VmmInfo
    from fsd.plugins import Plugins
    from fsd.sandbox import Sandbox

__all__ = ["SCHEMA", "DaemonStatus", "Frontend", "flag_names"]

SCHEMA: Final = 1

Transport = Literal["vhost-user", "dev-fuse"]


class OpenTables(Protocol):
    """What the status view reads of a filesystem: how many inodes and handles it holds."""

    @property
    def inodes(self) -> Sized: ...

    @property
    def handles(self) -> Sized: ...


@attrs.frozen
class Frontend:
    """The connected front-end process (SO_PEERCRED; -1 where unknown)."""

    pid: int
    uid: int
    gid: int
    #: Its /proc/PID/comm when it connected (None where /proc does not say).
    command: str | None
    connected_at: float  # time.monotonic()


def flag_names(value: int, flags: type[enum.IntFlag]) -> list[str]:
    """The names of the bits set in ``value``, lowest first; ``bit N`` for one ``flags``
    does not name."""
    known = {member.value: member.name for member in flags}
    return [
        known.get(1 << bit) or f"bit {bit}" for bit in range(value.bit_length()) if value >> bit & 1
    ]


def _command_of(pid: int) -> str | None:
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as comm:
            return comm.read().rstrip("\n") or None
    except OSError:
        return None


class DaemonStatus:
    """The live parts of one daemon, read when the status view is asked for."""

    def __init__(
        self,
        *,
        transport: Transport,
        shared_dir: str,
        server: FuseServer,
        tables: OpenTables,
        allowlist: Allowlist | None = None,
        plugins: Plugins | None = None,
        socket: str | None = None,
        mountpoint: str | None = None,
        thread_pool_size: int = 0,
        latency: RequestLatency | None = None,
        sandbox: Sandbox | None = None,
    ) -> None:
        from fsd.cli.version import fsd_version

        self.version = fsd_version()
        self.transport = transport
        self.shared_dir = shared_dir
        self.server = server
        self.tables = tables
        self.allowlist = allowlist
        self.plugins = plugins
        self.socket = socket
        self.mountpoint = mountpoint
        self.thread_pool_size = thread_pool_size
        self.latency = latency
        #: The sandbox the daemon entered (None: not sandboxed by fsd, e.g. in a test).
        self.sandbox = sandbox
        self.pid = sandbox.host_pid if sandbox is not None else os.getpid()
        self.started_at = time.time()
        self._started = time.monotonic()
        self.frontend: Frontend | None = None
        self.connection: VhostUserConnection | None = None

    # --- filled in by the daemon -------------------------------------------------------------

    def frontend_connected(self, vmm: VmmInfo) -> None:
        self.frontend = Frontend(vmm.pid, vmm.uid, vmm.gid, _command_of(vmm.pid), time.monotonic())

    def frontend_disconnected(self) -> None:
        self.frontend = None
        self.connection = None

    def connection_opened(self, connection: VhostUserConnection) -> None:
        self.connection = connection

    # --- read when asked ---------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The whole status document (JSON-ready: str, int, float, bool, None, list, dict)."""
        now = time.monotonic()
        return {
            "schema": SCHEMA,
            "fsd": {"version": self.version, "pid": self.pid},
            "transport": self.transport,
            "shared_dir": self.shared_dir,
            "socket": self.socket,
            "mountpoint": self.mountpoint,
            "started_at": round(self.started_at, 3),
            "uptime_seconds": round(now - self._started, 3),
            "frontend": self._frontend(now),
            "vhost_user": self._vhost_user(),
            "thread_pool_size": self.thread_pool_size,
            "fuse": self._fuse(),
            "requests": self._requests(),
            "latency": self._latency(),
            "open": {"inodes": len(self.tables.inodes), "handles": len(self.tables.handles)},
            "allowlist": self._allowlist(),
            "plugins": self.plugins.names() if self.plugins is not None else [],
            "sandbox": self._sandbox(),
        }

    def _sandbox(self) -> dict[str, Any] | None:
        sandbox = self.sandbox
        if sandbox is None:
            return None
        return {
            "mode": sandbox.mode.value,
            "seccomp": sandbox.seccomp.action.value if sandbox.seccomp is not None else "none",
            "user_namespace": sandbox.user_namespace,
            "capabilities": sorted(sandbox.capabilities),
        }

    def _frontend(self, now: float) -> dict[str, Any] | None:
        fe = self.frontend
        if fe is None:
            return None
        return {
            "pid": fe.pid,
            "uid": fe.uid,
            "gid": fe.gid,
            "command": fe.command,
            "connected_seconds": round(now - fe.connected_at, 3),
        }

    def _vhost_user(self) -> dict[str, Any] | None:
        conn = self.connection
        if conn is None:
            return None
        state = conn.state
        regions = state.regions
        queues = []
        for index in range(state.device.num_queues):
            runner = conn.runners.get(index)
            if runner is None and index not in conn.retired:
                continue  # never started: the front-end does not use it
            chains, interrupts = conn.retired.get(index, (0, 0))
            if runner is not None:
                chains += runner.chains
                interrupts += runner.interrupts
            queues.append(
                {
                    "index": index,
                    "running": runner is not None,
                    "requests": chains,
                    "interrupts": interrupts,
                }
            )
        return {
            "features": flag_names(state.acked_features, VirtioFeatures),
            "protocol_features": flag_names(state.acked_protocol_features, ProtocolFeatures),
            "memory_regions": len(regions),
            "memory_bytes": sum(region.size for region in regions),
            "queues": queues,
        }

    def _fuse(self) -> dict[str, Any]:
        session = self.server.session
        if not session.initialized:
            return {
                "initialized": False,
                "major": None,
                "minor": None,
                "flags": [],
                "max_readahead": None,
            }
        return {
            "initialized": True,
            "major": session.major,
            "minor": session.minor,
            "flags": flag_names(int(session.flags), InitFlag),
            "max_readahead": session.max_readahead,
        }

    def _requests(self) -> dict[str, Any]:
        stats = self.server.stats
        requests, errors = list(stats.requests), list(stats.errors)
        return {
            "total": sum(requests),
            "errors": sum(errors),
            "malformed": stats.malformed,
            "by_opcode": {
                op_name(opcode): {"requests": count, "errors": errors[opcode]}
                for opcode, count in enumerate(requests)
                if count
            },
        }

    def _latency(self) -> dict[str, Any] | None:
        latency = self.latency
        if latency is None:
            return None
        by_opcode: dict[str, Any] = {}
        for slot, row in enumerate(list(latency.rows)):
            if row is None:
                continue
            cumulative, running = [], 0
            for count in list(row):
                running += count
                cumulative.append(running)
            by_opcode[op_name(slot) if slot else "other"] = {
                "buckets": cumulative,
                "count": running,
                "sum_seconds": latency.sums_ns[slot] / 1e9,
            }
        return {"bounds_seconds": [bound / 1e9 for bound in BOUNDS_NS], "by_opcode": by_opcode}

    def _allowlist(self) -> dict[str, Any] | None:
        if self.allowlist is None:
            return None
        return {"paths": [format_path(path) for path in self.allowlist.explicit_paths()]}
