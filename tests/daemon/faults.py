"""Helpers for the fault tests: a FUSE client over the scripted front-end, and what a daemon
process holds (fds, guest-memory mappings, resident memory), to show nothing leaks."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from fsd.fuse.replies import NO_REPLY
from fsd.sgbuf import Segments, capacity
from fsd.testing import fuse_requests as fr
from fsd.testing.frontend import VhostUserFrontend
from fsd.testing.fuse_requests import FuseClient

__all__ = [
    "DaemonUsage",
    "FrontendServer",
    "btrfs_with_quota",
    "connect",
    "usage",
    "wait_for_usage",
    "write_request",
]


class FrontendServer:
    """``FuseClient``'s server, reached through a real daemon's virtqueue: each request is a
    descriptor chain in the front-end's guest memory."""

    def __init__(self, frontend: VhostUserFrontend) -> None:
        self.frontend = frontend

    def handle(self, request: Segments, reply: Segments) -> int:
        data = b"".join(bytes(segment) for segment in request)
        out = self.frontend.request(data, reply_size=min(capacity(reply), 1 << 20 | 4096))
        if not out:
            return NO_REPLY
        reply[0][: len(out)] = out
        return len(out)


def connect(socket_path: Path) -> tuple[VhostUserFrontend, FuseClient]:
    """A front-end through QEMU's start-up sequence and a FUSE session (INIT) over it."""
    frontend = VhostUserFrontend(str(socket_path))
    frontend.start()
    client = FuseClient(FrontendServer(frontend), reply_capacity=(1 << 20) + 4096)
    client.init()
    return frontend, client


class DaemonUsage(tuple[int, int, int]):
    """(open fds, guest-memory mappings, resident KiB) of a process."""

    @property
    def fds(self) -> int:
        return self[0]

    @property
    def guest_mappings(self) -> int:
        return self[1]

    @property
    def rss_kib(self) -> int:
        return self[2]


def usage(pid: int) -> DaemonUsage:
    """What ``pid`` holds now: its fds, its mappings of a front-end's memfd, its RSS."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    maps = Path(f"/proc/{pid}/maps").read_text()
    mappings = sum("memfd:fsd-test" in line for line in maps.splitlines())
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return DaemonUsage((fds, mappings, rss))


def wait_for_usage(pid: int, fds: int, timeout: float = 10.0) -> DaemonUsage:
    """Wait until ``pid`` is back to ``fds`` open fds and no guest memory (it finishes a
    disconnect asynchronously); returns the usage then, or the last seen at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        now = usage(pid)
        if (now.fds <= fds and now.guest_mappings == 0) or time.monotonic() > deadline:
            return now
        time.sleep(0.02)


def write_request(client: FuseClient, nodeid: int, fh: int, offset: int, data: bytes) -> bytes:
    """A WRITE's bytes with the next unique id."""
    return fr.write(client.next_unique(), nodeid, fh, offset, data)


def btrfs_with_quota(image: Path, mountpoint: Path) -> str | None:
    """Make a btrfs image with a 1 MiB qgroup limit and mount it; None, or why not."""
    if shutil.which("mkfs.btrfs") is None or shutil.which("btrfs") is None:
        return "btrfs-progs is not installed (contrib/setup-host.sh installs it)"
    with image.open("wb") as f:
        f.truncate(128 << 20)
    made = subprocess.run(["mkfs.btrfs", "-q", "-f", str(image)], capture_output=True, text=True)
    if made.returncode:
        return f"mkfs.btrfs failed: {made.stderr.strip()}"
    mount = subprocess.run(
        ["mount", "-o", "loop", str(image), str(mountpoint)], capture_output=True, text=True
    )
    if mount.returncode:
        return f"cannot mount a btrfs image here: {mount.stderr.strip()}"
    for args in (["quota", "enable"], ["qgroup", "limit", "1M"]):
        subprocess.run(["btrfs", *args, str(mountpoint)], check=True, capture_output=True)
    return None
