"""Inode and handle tables: one nodeid per host inode, counts, no fd leaks."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from fsd.fs import PassthroughFs, procfd
from fsd.fuse import FuseServer
from fsd.fuse.abi import ROOT_ID
from fsd.testing import fuse_requests as fr
from fsd.testing.fuse_requests import FuseClient


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_no_fd_leak_across_a_workload_and_destroy(share: Path) -> None:
    procfd.directory()  # the process-wide /proc/self/fd handle, opened once, is not a leak
    baseline = _open_fds()
    fs = PassthroughFs(share)
    client = FuseClient(FuseServer(fs))
    client.init()
    d = client.mkdir(ROOT_ID, "d")
    for i in range(50):
        entry, fh = client.create(d.nodeid, f"f{i}")
        client.write(entry.nodeid, fh, 0, b"x")
        client.lookup(d.nodeid, f"f{i}")
    client.listdir(d.nodeid, plus=True)
    client.opendir(ROOT_ID)
    assert _open_fds() > baseline + 50
    client.call(fr.destroy(client.next_unique()))
    assert len(fs.inodes) == 1
    fs.close()
    assert _open_fds() == baseline


def test_forget_to_zero_closes_the_o_path_fd(
    client: FuseClient, fs: PassthroughFs, share: Path
) -> None:
    (share / "f").touch()
    before = _open_fds()
    nodeid = client.lookup(ROOT_ID, "f").nodeid
    for _ in range(3):
        client.lookup(ROOT_ID, "f")
    assert _open_fds() == before + 1
    assert fs.inodes.get(nodeid).refcount == 4
    client.call(fr.forget(2, nodeid, 4))
    assert _open_fds() == before
    with pytest.raises(OSError, match="unknown nodeid") as info:
        fs.inodes.get(nodeid)
    assert info.value.errno == errno.EBADF


def test_nodeids_are_not_reused(client: FuseClient, share: Path) -> None:
    (share / "a").touch()
    first = client.lookup(ROOT_ID, "a").nodeid
    client.call(fr.forget(2, first, 1))
    assert client.lookup(ROOT_ID, "a").nodeid != first


def test_names_split_across_segments(client: FuseClient, share: Path) -> None:
    (share / "a-longer-file-name").write_bytes(b"data")
    reply = fr.parse_reply(client.call(fr.lookup(2, ROOT_ID, "a-longer-file-name"), split=7))
    assert reply.error == 0
    assert fr.parse_entry(reply.payload).attr.size == 4
    reply = fr.parse_reply(
        client.call(fr.rename(4, ROOT_ID, "a-longer-file-name", ROOT_ID, "b"), split=5)
    )
    assert reply.error == 0
    assert (share / "b").exists()


def test_a_released_handle_stays_open_for_an_operation_still_using_it(
    client: FuseClient, fs: PassthroughFs, share: Path
) -> None:
    """A data operation runs outside the server lock (fuse.server.CONCURRENT): a RELEASE, or
    DESTROY, meanwhile must not close the fd under it (its number could be reused)."""
    (share / "f").write_bytes(b"data")
    nodeid = client.lookup(ROOT_ID, "f").nodeid
    before = _open_fds()
    for release in (fr.release, None):
        fh = client.open(nodeid)
        in_flight = fs.handles.of(fh, nodeid)  # what a concurrent READ holds
        if release is not None:
            client.ok(release(client.next_unique(), nodeid, fh))
        else:
            client.call(fr.destroy(client.next_unique()))
            client.init()
            nodeid = client.lookup(ROOT_ID, "f").nodeid
        assert len(fs.handles) == 0
        assert os.pread(in_flight.fd, 4, 0) == b"data"  # still the file, still open
        fd = in_flight.fd
        del in_flight  # the operation returns
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(fd)
    assert _open_fds() <= before + 1
