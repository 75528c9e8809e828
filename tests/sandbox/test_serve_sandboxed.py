"""``fsd serve`` as a VMM starts it, sandboxed by default: what the running server can see
and do, checked from outside through /proc, and a front-end served through it."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest

from fsd.sandbox import FILE_SERVER_CAPABILITIES
from fsd.sandbox.capabilities import CAPABILITIES
from fsd.testing import fuse_requests as fr
from fsd.testing.serve import ServeProcess
from tests.daemon.faults import connect

ROOT_ID = 1
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (capabilities)")


def proc_status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def capability_mask(names: frozenset[str]) -> int:
    return sum(1 << CAPABILITIES.index(name) for name in names)


@pytest.fixture
def share(tmp_path: Path) -> Path:
    share = tmp_path / "share"
    share.mkdir()
    (share / "hello.txt").write_text("hello from the host\n")
    # Planted by a guest (or a host user) to lead the server out of the share.
    (share / "passwd").symlink_to("/etc/passwd")
    (share / "host-etc").symlink_to("/etc")
    return share


def served(share: Path, socket_path: Path, *extra: str) -> ServeProcess:
    return ServeProcess(share, socket_path, "--log-level", "info", *extra)


def check_serves(socket_path: Path) -> None:
    """A guest reads a file and cannot follow the planted symlinks out of the share."""
    frontend, client = connect(socket_path)
    try:
        entry = client.lookup(ROOT_ID, "hello.txt")
        fh = client.open(entry.nodeid)
        assert client.read(entry.nodeid, fh, 0, 100) == b"hello from the host\n"
        link = client.lookup(ROOT_ID, "passwd")  # the symlink itself, never its target
        assert client.errno_of(fr.open_(client.next_unique(), link.nodeid)) == errno.ELOOP
        etc = client.lookup(ROOT_ID, "host-etc")
        through = fr.lookup(client.next_unique(), etc.nodeid, "passwd")
        assert client.errno_of(through) == errno.ENOTDIR
    finally:
        frontend.close()


@root_only
def test_by_default_the_server_runs_in_the_namespace_sandbox(share: Path, tmp_path: Path) -> None:
    daemon = served(share, tmp_path / "vhost.sock")
    try:
        server = daemon.server_pid
        assert server != daemon.proc.pid, "a supervisor outside, the server in a child"
        status = proc_status(server)
        assert int(status["CapEff"], 16) == capability_mask(FILE_SERVER_CAPABILITIES)
        assert int(status["CapBnd"], 16) == capability_mask(FILE_SERVER_CAPABILITIES)
        assert (status["NoNewPrivs"], status["Seccomp"]) == ("1", "2")
        assert status["NSpid"].split()[1:] == ["1"], "pid 1 of its own pid namespace"
        # Its root is a tmpfs holding the share (and read-only code), not the host's.
        root = Path(f"/proc/{server}/root")
        assert not (root / "etc" / "passwd").exists() and not (root / "home").exists()
        assert (root / str(share).lstrip("/") / "hello.txt").read_text().startswith("hello")
        for kind in ("net", "mnt", "ipc", "pid"):
            assert os.readlink(f"/proc/{server}/ns/{kind}") != os.readlink(f"/proc/self/ns/{kind}")
        supervisor = proc_status(daemon.proc.pid)
        assert int(supervisor["CapEff"], 16) == 0 and supervisor["NoNewPrivs"] == "1"
        check_serves(daemon.socket_path)
    finally:
        status_code, log = daemon.stop()
    assert status_code == 0, log
    assert "sandbox: namespace" in log
    assert not daemon.socket_path.exists(), "the supervisor removed the socket file"


@root_only
def test_chroot_mode_confines_the_server_to_the_share(share: Path, tmp_path: Path) -> None:
    daemon = served(share, tmp_path / "vhost.sock", "--sandbox", "chroot")
    try:
        server = daemon.server_pid
        assert os.readlink(f"/proc/{server}/root") == str(share)
        assert proc_status(server)["Seccomp"] == "2"
        check_serves(daemon.socket_path)
    finally:
        status_code, log = daemon.stop()
    assert status_code == 0, log
    assert "sandbox: chroot" in log


def test_none_mode_warns_and_still_filters_system_calls(share: Path, tmp_path: Path) -> None:
    daemon = served(share, tmp_path / "vhost.sock", "--sandbox", "none")
    try:
        assert daemon.server_pid == daemon.proc.pid
        assert proc_status(daemon.proc.pid)["Seccomp"] == "2"
        check_serves(daemon.socket_path)
    finally:
        status_code, log = daemon.stop()
    assert status_code == 0, log
    assert "sandbox: none: fsd sees the whole host file system" in log


@pytest.mark.parametrize("mode", ["namespace", "none"])
def test_a_plugin_making_a_forbidden_system_call_is_killed(
    share: Path, tmp_path: Path, mode: str
) -> None:
    if mode == "namespace" and os.geteuid() != 0:
        pytest.skip("the namespace case needs root here (see test_sandbox for a user's)")
    plugin = "tests.sandbox.forbidden_plugin:plugin"
    daemon = served(share, tmp_path / "vhost.sock", "--sandbox", mode, "--plugin", plugin)
    frontend, client = connect(daemon.socket_path)
    try:
        client.lookup(ROOT_ID, "hello.txt")  # the plugin lets this one through
        # Sent without waiting for a reply: the daemon is gone before it could answer.
        frontend.queues[1].add_request(fr.lookup(client.next_unique(), ROOT_ID, "forbidden"), 4096)
        frontend.kick(1)
        status_code, log = daemon.stop(None)
    finally:
        frontend.close()
    if mode == "namespace":  # the supervisor reports how the server died
        assert status_code == 128 + signal.SIGSYS, log
        assert "killed by signal SIGSYS (a system call outside the seccomp allowlist)" in log
        assert not daemon.socket_path.exists()
    else:
        assert status_code == -signal.SIGSYS, log


@pytest.mark.parametrize("mode", ["namespace", "none"])
def test_sigterm_as_soon_as_the_socket_exists_is_a_clean_exit(
    share: Path, tmp_path: Path, mode: str
) -> None:
    """The socket is bound before the sandbox and the plugins: a VMM manager that stops fsd
    the moment it sees the socket gets exit status 0 and no socket file left, not a daemon
    killed half-way through its start-up."""
    import subprocess
    import sys
    import time

    if mode == "namespace" and os.geteuid() != 0:
        pytest.skip("the namespace sandbox of a root daemon")
    socket_path = tmp_path / "vhost.sock"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "fsd", "serve", "--socket-path", str(socket_path),
         "--shared-dir", str(share), "--sandbox", mode],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not socket_path.exists():
        assert daemon.poll() is None and time.monotonic() < deadline
        time.sleep(0.001)
    daemon.send_signal(signal.SIGTERM)
    _, log = daemon.communicate(timeout=20)
    assert daemon.returncode == 0, log
    assert not socket_path.exists()
