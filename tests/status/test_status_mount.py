"""``fsd status`` against a real ``fsd mount``: the host kernel is the client, through a mount
point; what the test does on the mount shows in the status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fsd.daemon import mount_syscalls
from fsd.testing.mount import devfuse_unavailable, force_unmount
from tests.status.exposition import parse_exposition, sample_value

pytestmark = [
    pytest.mark.devfuse,
    pytest.mark.timeout(60, method="thread"),
    pytest.mark.skipif(devfuse_unavailable() is not None, reason=str(devfuse_unavailable())),
]


@pytest.fixture
def mountpoint(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "mnt"
    path.mkdir()
    yield path
    force_unmount(path)


def _status(socket_path: Path, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "fsd", "status", "--socket", str(socket_path), *args],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip


def test_status_of_a_mount(share: Path, mountpoint: Path, tmp_path: Path) -> None:
    (share / "f").write_text("hello")
    status_socket = tmp_path / "status.sock"
    control = tmp_path / "ctl.sock"
    process = subprocess.Popen(
        [sys.executable, "-m", "fsd", "mount", str(share), str(mountpoint), "--cfg", "timeout=0",
         "--status-socket", str(status_socket), "--latency-histogram",
         "--allowlist-socket-path", str(control)],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not mount_syscalls.is_mount_point(str(mountpoint)):
            assert process.poll() is None and time.monotonic() < deadline, "no mount"
            time.sleep(0.02)
        subprocess.run(
            [sys.executable, "-m", "fsd", "allowlist", "--socket", str(control), "add", "/f"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        with open(mountpoint / "f") as opened:
            assert opened.read() == "hello"
            doc: dict[str, Any] = json.loads(_status(status_socket, "--json"))
            assert doc["transport"] == "dev-fuse"
            assert doc["mountpoint"] == str(mountpoint) and doc["socket"] is None
            assert doc["frontend"] is None and doc["vhost_user"] is None
            assert doc["fuse"]["initialized"]
            by_opcode = doc["requests"]["by_opcode"]
            assert by_opcode["LOOKUP"]["requests"] >= 1 and by_opcode["OPEN"]["requests"] >= 1
            assert doc["open"]["handles"] >= 1  # the file this test holds open
            assert doc["open"]["inodes"] >= 2
            assert doc["allowlist"] == {"paths": ["/f"]}
            assert doc["latency"]["by_opcode"]["OPEN"]["count"] == by_opcode["OPEN"]["requests"]
        text = _status(status_socket)
        assert f"through /dev/fuse on {mountpoint}" in text
        assert "client: the host kernel (FUSE mount)" in text
        samples = parse_exposition(_status(status_socket, "--prometheus"))
        assert sample_value(samples, "fsd_info", transport="dev-fuse") == 1
        assert sample_value(samples, "fsd_requests_total", opcode="OPEN") >= 1
        assert oct(os.stat(status_socket).st_mode & 0o777) == oct(0o600)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert not status_socket.exists()  # removed at exit
