"""A real ``fsd serve`` started as a socket-activated, ``Type=notify`` service would be: it
takes the listening socket it inherits (``$LISTEN_FDS``) instead of binding its own, says
READY=1 once that socket is served, STATUS= lines, STOPPING=1 at exit, and leaves the socket
file to its owner. The scripted front-end is the VMM. Once with the variables set up here,
once with systemd's own ``systemd-socket-activate``."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsd.testing.frontend import VhostUserFrontend
from fsd.testing.guest import fsd_env
from tests.systemd.activation import activated, high_fd
from tests.systemd.notify_listener import NotifyListener
from tests.systemd.vmm import serve_one_file


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """Short paths: a Unix socket address holds 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="fsd-sd-") as d:
        yield Path(d)


@pytest.fixture
def shared(run_dir: Path) -> Path:
    path = run_dir / "shared"
    path.mkdir()
    (path / "hello.txt").write_bytes(b"hello from the host\n")
    return path


def serve_argv(socket_path: Path, shared: Path) -> list[str]:
    return [
        sys.executable, "-m", "fsd", "serve", "--socket-path", str(socket_path),
        "--shared-dir", str(shared), "--log-level", "debug",
    ]  # fmt: skip


def check_lifecycle(
    proc: subprocess.Popen[str], notify: NotifyListener, socket_path: Path, inode: int
) -> None:
    """READY, front-end served, STATUS, STOPPING, exit 0, the socket file left in place."""
    try:
        fe = VhostUserFrontend(str(socket_path))
        try:
            ready = notify.wait_for("READY")
            assert ready.pid == proc.pid, "READY=1 must come from the main process"
            assert ready.fields["STATUS"] == f"listening on {socket_path}"
            assert serve_one_file(fe, b"hello.txt") == len(b"hello from the host\n")
            serving = notify.wait_for("STATUS")
            assert serving.fields["STATUS"] == f"serving the front-end (pid {os.getpid()})"
        finally:
            fe.close()
        stopping = notify.wait_for("STOPPING")
        assert stopping.fields == {"STOPPING": "1", "STATUS": "vmm disconnected"}
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    # fsd neither bound a socket of its own nor removed the one it was given.
    assert os.lstat(socket_path).st_ino == inode
    assert "removing stale socket" not in err
    assert f"listening on {socket_path}" in err


def test_serve_takes_the_inherited_listener(run_dir: Path, shared: Path) -> None:
    socket_path = run_dir / "vhost.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    os.chmod(socket_path, 0o600)
    listener.listen(8)
    inode = os.lstat(socket_path).st_ino
    notify = NotifyListener(str(run_dir / "notify"))
    env = {**fsd_env(), "NOTIFY_SOCKET": notify.address, "LISTEN_FDNAMES": "vhost-user"}
    fd = high_fd(listener)
    try:
        argv = activated(serve_argv(socket_path, shared), [fd], env)
        proc = subprocess.Popen(argv, env=env, pass_fds=[fd], stderr=subprocess.PIPE, text=True)
    finally:
        os.close(fd)
    with listener:
        check_lifecycle(proc, notify, socket_path, inode)
        # The service manager's socket still listens: the next VMM would start a new fsd.
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        assert stat.S_IMODE(os.lstat(socket_path).st_mode) == 0o600
    notify.close()


def test_serve_under_systemd_socket_activate(run_dir: Path, shared: Path) -> None:
    """systemd's own activator: it binds, waits for the first connection, then execs fsd with
    LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES exactly as the service manager sets them."""
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.fail("systemd-socket-activate is missing: contrib/setup-host.sh installs systemd")
    socket_path = run_dir / "vhost.sock"
    notify = NotifyListener(str(run_dir / "notify"))
    env = fsd_env()
    passed = ["-E", f"NOTIFY_SOCKET={notify.address}", "-E", f"PYTHONPATH={env['PYTHONPATH']}"]
    argv = [tool, "-l", str(socket_path), "--fdname=vhost-user", *passed,
            *serve_argv(socket_path, shared)]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not socket_path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "activator did not listen"
        time.sleep(0.02)
    check_lifecycle(proc, notify, socket_path, os.lstat(socket_path).st_ino)
    notify.close()
