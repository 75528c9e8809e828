"""Plain system calls on an fsd mount reach the share, and the share's symlinks stay inert."""

from __future__ import annotations

import errno
import os
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsd.testing.mount import Mount

pytestmark = [pytest.mark.devfuse, pytest.mark.timeout(60, method="thread")]


def test_create_write_read(fsd_mount: Mount) -> None:
    path = fsd_mount.mountpoint / "file"
    path.write_bytes(b"hello fsd")
    assert path.read_bytes() == b"hello fsd"
    assert (fsd_mount.shared_dir / "file").read_bytes() == b"hello fsd"


def test_large_file_crosses_max_write(fsd_mount: Mount) -> None:
    data = os.urandom(3 * (1 << 20) + 12345)
    (fsd_mount.mountpoint / "big").write_bytes(data)
    assert (fsd_mount.shared_dir / "big").read_bytes() == data
    assert (fsd_mount.mountpoint / "big").read_bytes() == data
    fd = os.open(fsd_mount.mountpoint / "big", os.O_RDONLY)
    try:
        assert os.pread(fd, 100, (1 << 20) - 50) == data[(1 << 20) - 50 : (1 << 20) + 50]
        assert os.pread(fd, 100, len(data) - 10) == data[-10:]
    finally:
        os.close(fd)


def test_readdir(fsd_mount: Mount) -> None:
    names = {f"entry-{i:03}" for i in range(300)}
    for name in names:
        (fsd_mount.shared_dir / name).touch()
    (fsd_mount.shared_dir / "dir").mkdir()
    assert set(os.listdir(fsd_mount.mountpoint)) == names | {"dir"}
    kinds = {e.name: e.is_dir() for e in os.scandir(fsd_mount.mountpoint)}
    assert kinds["dir"] is True
    assert kinds["entry-000"] is False


def test_mkdir_rename_unlink_rmdir(fsd_mount: Mount) -> None:
    mnt, share = fsd_mount.mountpoint, fsd_mount.shared_dir
    (mnt / "d").mkdir()
    (mnt / "d" / "f").write_text("x")
    os.rename(mnt / "d" / "f", mnt / "g")
    assert (share / "g").read_text() == "x"
    assert not (share / "d" / "f").exists()
    (mnt / "d" / "h").touch()
    with pytest.raises(OSError, match="not empty") as info:
        os.rmdir(mnt / "d")
    assert info.value.errno == errno.ENOTEMPTY
    os.unlink(mnt / "d" / "h")
    os.rmdir(mnt / "d")
    os.unlink(mnt / "g")
    assert os.listdir(share) == []


def test_create_mode_is_not_masked_twice(fsd_mount: Mount) -> None:
    old = os.umask(0o022)
    try:
        fd = os.open(fsd_mount.mountpoint / "f", os.O_CREAT | os.O_WRONLY, 0o666)
        os.close(fd)
        os.mkdir(fsd_mount.mountpoint / "d", 0o777)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(fsd_mount.shared_dir / "f").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(fsd_mount.shared_dir / "d").st_mode) == 0o755


def test_chmod_truncate_utime(fsd_mount: Mount) -> None:
    mnt, share = fsd_mount.mountpoint, fsd_mount.shared_dir
    (mnt / "f").write_bytes(b"0123456789")
    os.chmod(mnt / "f", 0o640)
    assert stat.S_IMODE(os.stat(share / "f").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(mnt / "f").st_mode) == 0o640
    os.truncate(mnt / "f", 4)
    assert (share / "f").read_bytes() == b"0123"
    os.truncate(mnt / "f", 8)
    assert (mnt / "f").read_bytes() == b"0123\0\0\0\0"
    times = (1_000_000_123_456_789, 1_200_000_987_654_321)
    os.utime(mnt / "f", ns=times)
    host = os.stat(share / "f")
    assert (host.st_atime_ns, host.st_mtime_ns) == times
    assert os.stat(mnt / "f").st_mtime_ns == times[1]


def test_statfs_reports_the_share(fsd_mount: Mount) -> None:
    via_mount = os.statvfs(fsd_mount.mountpoint)
    host = os.statvfs(fsd_mount.shared_dir)
    assert via_mount.f_bsize == host.f_bsize
    assert via_mount.f_blocks == host.f_blocks
    assert via_mount.f_namemax == host.f_namemax


def test_hard_link_counts(fsd_mount: Mount) -> None:
    mnt = fsd_mount.mountpoint
    (mnt / "a").write_text("x")
    os.link(mnt / "a", mnt / "b")
    assert os.stat(mnt / "a").st_nlink == 2
    assert os.stat(mnt / "a").st_ino == os.stat(mnt / "b").st_ino
    os.unlink(mnt / "a")
    assert os.stat(mnt / "b").st_nlink == 1


class _HostPathWatch:
    """Records every path the server's threads name to the OS (audit events: the mount's trio
    thread and its worker threads) and every fd it holds.

    Relative names are resolved by the server against fds inside the share, so the fds it ends
    up holding are the other half of the evidence.
    """

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.events = 0
        self.enabled = False
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple[object, ...]) -> None:
        name = threading.current_thread().name
        if not self.enabled or not name.startswith(("fsd mount", "fsd-fuse-")):
            return
        if event == "open" or event.startswith("os."):
            self.events += 1
            for arg in args:
                if isinstance(arg, (str, bytes)) and os.fsdecode(arg).startswith("/"):
                    self.paths.append(os.fsdecode(arg))


_WATCH: _HostPathWatch | None = None


@pytest.fixture
def host_path_watch() -> Iterator[_HostPathWatch]:
    global _WATCH
    if _WATCH is None:  # audit hooks cannot be removed: install one for the session
        _WATCH = _HostPathWatch()
    _WATCH.paths.clear()
    _WATCH.events = 0
    _WATCH.enabled = True
    yield _WATCH
    _WATCH.enabled = False


def _fd_targets() -> set[str]:
    targets = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            targets.add(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:
            continue
    return targets


def test_symlinks_out_of_the_share_are_not_followed_by_the_server(
    fsd_mount: Mount, tmp_path: Path, host_path_watch: _HostPathWatch
) -> None:
    mnt, share = fsd_mount.mountpoint, fsd_mount.shared_dir
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret")
    os.symlink("/etc", share / "etc")
    os.symlink(outside / "secret", share / "abs")
    os.symlink("../../outside/secret", share / "rel")
    os.symlink("/nonexistent/x", share / "dangling")
    before = _fd_targets()

    for name, target in [
        ("etc", "/etc"),
        ("abs", str(outside / "secret")),
        ("rel", "../../outside/secret"),
        ("dangling", "/nonexistent/x"),
    ]:
        st = os.lstat(mnt / name)
        assert stat.S_ISLNK(st.st_mode), name
        assert os.readlink(mnt / name) == target
        os.utime(mnt / name, ns=(1, 2), follow_symlinks=False)
        os.chown(mnt / name, 0, 0, follow_symlinks=False)
        fd = os.open(mnt / name, os.O_PATH | os.O_NOFOLLOW)
        os.close(fd)
    assert sorted(os.listdir(mnt)) == ["abs", "dangling", "etc", "rel"]
    assert os.lstat(outside / "secret").st_mtime_ns != 2
    # The kernel resolves these in the client's namespace (the host's here), not the server.
    assert (mnt / "abs").read_text() == "host secret"
    with pytest.raises(FileNotFoundError):
        os.stat(mnt / "dangling")

    outside_paths = [
        p
        for p in host_path_watch.paths
        if not (p == str(share) or p.startswith((f"{share}/", "/proc/self/fd/")))
    ]
    assert host_path_watch.events > 0  # the hook does see the server thread's calls
    assert outside_paths == []
    new_fds = _fd_targets() - before
    escaped = [t for t in new_fds if t.startswith("/") and not t.startswith(f"{share}")]
    assert escaped == []
