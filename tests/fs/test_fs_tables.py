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


def test_lookups_take_the_cheaper_way_in_runs_of_new_and_known_inodes(
    client: FuseClient, fs: PassthroughFs, share: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run of new inodes is looked up open-first (no stat(2) before the open), known ones
    stat-first (no fd opened); either way each name gets its own inode, counted once per
    lookup, and an fd opened for an inode the table held is closed again."""
    for i in range(4):
        (share / f"f{i}").touch()
    os.link(share / "f0", share / "hard")
    stats = 0
    real_stat = os.stat

    def counting_stat(*args: object, **kwargs: object) -> os.stat_result:
        nonlocal stats
        stats += 1
        return real_stat(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", counting_stat)
    before = _open_fds()
    new = [client.lookup(ROOT_ID, f"f{i}").nodeid for i in range(4)]
    assert stats == 1, "only the first of a run of new inodes is stat-first"
    assert _open_fds() == before + 4
    assert client.lookup(ROOT_ID, "hard").nodeid == new[0]  # known, met open-first
    assert _open_fds() == before + 4, "the extra fd is closed"
    stats = 0
    again = [client.lookup(ROOT_ID, f"f{i}").nodeid for i in range(4)]
    assert again == new and stats == 4 and _open_fds() == before + 4
    assert [fs.inodes.get(n).refcount for n in new] == [3, 2, 2, 2]
    with pytest.raises(FileNotFoundError):  # a missing name: ENOENT either way
        client.lookup(ROOT_ID, "missing")
