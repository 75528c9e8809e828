"""``--inode-file-handles``: known inodes held by file handle, not by an O_PATH fd each.

Through request bytes: more files looked up than RLIMIT_NOFILE allows fds, and every
operation still works on them; a deleted inode answers ESTALE (as virtiofsd's does) and a
new file that reuses its inode number is a new nodeid; ``prefer`` falls back to fds on a
filesystem without handles, ``mandatory`` refuses. ``open_by_handle_at`` needs
CAP_DAC_READ_SEARCH, so these tests need root.
"""

from __future__ import annotations

import errno
import os
import resource
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsd.fs import FsOptions, PassthroughFs
from fsd.fs.file_handles import HandleInodeTable, handle_of, probe
from fsd.fs.inodes import InodeTable
from fsd.fuse import FuseServer
from fsd.fuse.abi import ROOT_ID
from fsd.testing import fuse_requests as fr
from fsd.testing.fuse_requests import FuseClient

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="open_by_handle_at needs root")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def low_nofile() -> Iterator[int]:
    """RLIMIT_NOFILE lowered (soft) to 200 more files than this process has open (whatever
    the tests before left open), put back afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = _open_fds() + 200
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    yield limit
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _serve(share: Path, mode: str = "mandatory") -> tuple[PassthroughFs, FuseClient]:
    fs = PassthroughFs(share, FsOptions(inode_file_handles=mode))  # type: ignore[arg-type]
    client = FuseClient(FuseServer(fs))
    client.init()
    return fs, client


def test_more_files_than_fds_all_keep_working(share: Path, low_nofile: int) -> None:
    count = 3 * low_nofile
    (share / "d").mkdir()
    for i in range(count):
        (share / "d" / f"f{i}").write_text(f"file {i}")
    before = _open_fds()
    fs, client = _serve(share)
    try:
        assert isinstance(fs.inodes, HandleInodeTable)
        d = client.lookup(ROOT_ID, "d").nodeid
        nodes = [client.lookup(d, f"f{i}").nodeid for i in range(count)]
        assert len(set(nodes)) == count
        assert fs.inodes.open_fds <= (low_nofile - before) // 4
        assert _open_fds() < low_nofile
        # The first ones were looked up longest ago: their fds are closed; they reopen.
        assert client.getattr(nodes[0]).size == len("file 0")
        fh = client.open(nodes[1], os.O_RDWR)
        assert client.read(nodes[1], fh, 0, 100) == b"file 1"
        assert client.write(nodes[1], fh, 0, b"FILE") == 4
        client.ok(fr.release(client.next_unique(), nodes[1], fh))
        assert (share / "d" / "f1").read_text() == "FILE 1"
        client.ok(fr.setattr(client.next_unique(), nodes[2], mode=0o600))
        assert (share / "d" / "f2").stat().st_mode & 0o777 == 0o600
        client.ok(fr.rename(client.next_unique(), d, "f3", d, "renamed"))
        assert (share / "d" / "renamed").read_text() == "file 3"
        assert fs.path(nodes[3]) == b"d/renamed"
        assert client.getattr(nodes[3]).size == len("file 3")
        client.ok(fr.unlink(client.next_unique(), d, "f4"))
        assert not (share / "d" / "f4").exists()
        client.ok(fr.setxattr(client.next_unique(), nodes[5], "user.k", b"v"))
        assert os.getxattr(share / "d" / "f5", "user.k") == b"v"
        names = {e.name for e in client.listdir(d, plus=True)}
        assert {b"renamed", b"f0", f"f{count - 1}".encode()} <= names
        assert _open_fds() < low_nofile
        for nodeid in nodes:  # the lookup, and READDIRPLUS's
            client.call(fr.forget(client.next_unique(), nodeid, 2))
        assert len(fs.inodes) == 2  # the root and d
        assert fs.inodes.open_fds <= 1
    finally:
        fs.close()


def test_a_deleted_inode_answers_estale_and_its_number_is_not_reused(share: Path) -> None:
    (share / "a").write_text("old")
    fs, client = _serve(share)
    try:
        assert isinstance(fs.inodes, HandleInodeTable)
        old = client.lookup(ROOT_ID, "a")
        fs.inodes.close_fds()
        os.unlink(share / "a")
        (share / "a").write_text("new file")  # ext4 and others hand out the same number
        assert client.errno_of(fr.getattr(client.next_unique(), old.nodeid)) == errno.ESTALE
        assert client.errno_of(fr.open_(client.next_unique(), old.nodeid)) == errno.ESTALE
        new = client.lookup(ROOT_ID, "a")
        assert new.nodeid != old.nodeid
        assert client.getattr(new.nodeid).size == len("new file")
        fh = client.open(new.nodeid)
        assert client.read(new.nodeid, fh, 0, 100) == b"new file"
    finally:
        fs.close()


def test_with_o_path_fds_the_deleted_file_stays_what_the_guest_had(share: Path) -> None:
    """The contrast: ``never`` pins the inode, so the guest's nodeid still reads it."""
    (share / "a").write_text("old")
    fs, client = _serve(share, "never")
    try:
        assert type(fs.inodes) is InodeTable
        old = client.lookup(ROOT_ID, "a")
        os.unlink(share / "a")
        assert client.getattr(old.nodeid).size == 3
    finally:
        fs.close()


@pytest.fixture
def ramfs(share: Path) -> Iterator[Path]:
    """A ramfs (no file handles) mounted inside the share."""
    mnt = share / "ram"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "fsd-test", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_prefer_falls_back_to_fds_where_there_are_no_handles(share: Path, ramfs: Path) -> None:
    (ramfs / "x").write_text("in ramfs")
    (share / "y").write_text("on the share's filesystem")
    fd = os.open(ramfs / "x", os.O_PATH)
    try:
        assert handle_of(fd) is None
    finally:
        os.close(fd)
    fs, client = _serve(share, "prefer")
    try:
        ram = client.lookup(ROOT_ID, "ram").nodeid
        x = client.lookup(ram, "x").nodeid
        y = client.lookup(ROOT_ID, "y").nodeid
        assert fs.inodes.get(x).handle is None  # held by its O_PATH fd
        assert fs.inodes.get(y).handle is not None
        fh = client.open(x)
        assert client.read(x, fh, 0, 100) == b"in ramfs"
    finally:
        fs.close()


def test_mandatory_refuses_where_there_are_no_handles(share: Path, ramfs: Path) -> None:
    (ramfs / "x").write_text("in ramfs")
    fs, client = _serve(share, "mandatory")
    try:
        assert client.errno_of(fr.lookup(client.next_unique(), ROOT_ID, "ram")) == errno.EOPNOTSUPP
    finally:
        fs.close()


def test_mandatory_refuses_to_start_on_a_share_without_handles(ramfs: Path) -> None:
    assert probe_path(ramfs) is not None
    with pytest.raises(OSError, match="--inode-file-handles=mandatory"):
        PassthroughFs(ramfs, FsOptions(inode_file_handles="mandatory"))
    fs = PassthroughFs(ramfs, FsOptions(inode_file_handles="prefer"))
    try:
        assert type(fs.inodes) is InodeTable
    finally:
        fs.close()


def probe_path(path: Path) -> str | None:
    fd = os.open(path, os.O_PATH | os.O_DIRECTORY)
    try:
        return probe(fd)
    finally:
        os.close(fd)


def test_destroy_and_close_leave_no_fd_behind(share: Path) -> None:
    for i in range(50):
        (share / f"f{i}").write_text("x")
    before = _open_fds()
    fs, client = _serve(share)
    for i in range(50):
        client.lookup(ROOT_ID, f"f{i}")
    client.call(fr.destroy(client.next_unique()))
    assert isinstance(fs.inodes, HandleInodeTable)
    assert fs.inodes.open_fds == 0
    fs.close()
    assert _open_fds() == before
