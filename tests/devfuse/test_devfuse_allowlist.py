"""``fsd mount --allowlist-socket-path``: allowlist changes over the real control socket take
effect on a real kernel mount while it is mounted (``--cfg timeout=0``: the kernel caches
nothing, as a guest with that setting would).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsd.allowlist.client import AllowlistClient
from fsd.daemon import mount_syscalls
from fsd.testing.mount import devfuse_unavailable, force_unmount


@pytest.fixture
def controlled_mount(share: Path, tmp_path: Path) -> Iterator[tuple[Path, AllowlistClient]]:
    """``fsd mount`` as a subprocess with a control socket; yields (mountpoint, client)."""
    reason = devfuse_unavailable()
    if reason is not None:
        pytest.skip(reason)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    ctrl = tmp_path / "ctrl.sock"
    argv = [sys.executable, "-m", "fsd", "mount", str(share), str(mnt)]
    argv += ["--cfg", "timeout=0", "--allowlist-socket-path", str(ctrl)]
    log = tmp_path / "fsd.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(argv, stderr=stderr)
    try:
        deadline = time.monotonic() + 20
        while not (ctrl.exists() and mount_syscalls.is_mount_point(str(mnt))):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"fsd mount did not come up: {log.read_text()}")
            time.sleep(0.02)
        with AllowlistClient(str(ctrl), timeout=10) as client:
            yield mnt, client
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        force_unmount(mnt)
    assert proc.returncode == 0, log.read_text()
    assert not ctrl.exists(), "the control socket is removed on exit"


def test_changes_take_effect_while_mounted(
    controlled_mount: tuple[Path, AllowlistClient], share: Path
) -> None:
    mnt, client = controlled_mount
    (share / "public").mkdir()
    (share / "public" / "hello.txt").write_text("hello\n")
    (share / "secret").mkdir()
    (share / "secret" / "plans.txt").write_text("secret\n")
    (share / "inbox").mkdir()

    # Empty allowlist: the mount works but shows nothing.
    assert os.listdir(mnt) == []
    assert not (mnt / "public" / "hello.txt").exists()
    with pytest.raises(PermissionError):
        (mnt / "new.txt").write_text("x")

    client.add(["/public", "/inbox"])
    assert sorted(os.listdir(mnt)) == ["inbox", "public"]
    assert (mnt / "public" / "hello.txt").read_text() == "hello\n"
    assert not (mnt / "secret").exists()
    with pytest.raises(FileNotFoundError):
        (mnt / "secret" / "new.txt").write_text("x")
    with pytest.raises(PermissionError):
        (mnt / "top.txt").write_text("x")
    (mnt / "inbox" / "note.txt").write_text("note\n")
    assert (share / "inbox" / "note.txt").read_text() == "note\n"
    os.rename(mnt / "inbox" / "note.txt", mnt / "public" / "note.txt")

    # Revocation: new lookups fail at once, an open file keeps working.
    held = open(mnt / "public" / "hello.txt", "rb")  # noqa: SIM115
    try:
        client.remove(["/public"])
        assert not (mnt / "public").exists()
        assert not (mnt / "public" / "hello.txt").exists()
        assert os.listdir(mnt) == ["inbox"]
        assert held.read() == b"hello\n"
    finally:
        held.close()
    assert client.list() == ["/inbox"]
    assert not (share / "secret" / "new.txt").exists()
    assert not (share / "top.txt").exists()


def test_deep_allow_makes_ancestors_traversable_only(
    controlled_mount: tuple[Path, AllowlistClient], share: Path
) -> None:
    mnt, client = controlled_mount
    (share / "a" / "b").mkdir(parents=True)
    (share / "a" / "other").write_text("x")
    client.add(["/a/b"])
    assert os.listdir(mnt / "a") == ["b"]
    (mnt / "a" / "b" / "f").write_text("ok")
    with pytest.raises(PermissionError):
        os.mkdir(mnt / "a" / "d")
    with pytest.raises(PermissionError):
        os.chmod(mnt / "a", 0o777)
    with pytest.raises(PermissionError):
        os.rename(mnt / "a" / "b" / "f", mnt / "a" / "f")
    # Removing the added entry itself is allowed although /a is only TRAVERSE.
    os.unlink(mnt / "a" / "b" / "f")
    os.rmdir(mnt / "a" / "b")
    assert os.listdir(share / "a") == ["other"]


def test_a_live_control_socket_is_refused(share: Path, tmp_path: Path) -> None:
    reason = devfuse_unavailable()
    if reason is not None:
        pytest.skip(reason)
    (tmp_path / "mnt").mkdir()
    ctrl = tmp_path / "ctrl"
    ctrl.write_text("not a socket")
    argv = [sys.executable, "-m", "fsd", "mount", str(share), str(tmp_path / "mnt")]
    done = subprocess.run(
        [*argv, "--allowlist-socket-path", str(ctrl)], capture_output=True, timeout=30
    )
    force_unmount(tmp_path / "mnt")
    assert done.returncode == 2, done.stderr  # refused at start-up, before mounting
    assert b"fsd mount: --allowlist-socket-path" in done.stderr
    assert b"exists and is not a socket" in done.stderr
    assert ctrl.read_text() == "not a socket"
