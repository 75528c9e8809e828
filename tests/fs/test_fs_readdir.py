"""READDIR and READDIRPLUS: complete listings across calls, lookup counts, dot entries."""

from __future__ import annotations

import errno
from pathlib import Path

from fsd.fs import PassthroughFs
from fsd.fuse.abi import DT_DIR, DT_LNK, DT_REG, ROOT_ID
from fsd.testing import fuse_requests as fr
from fsd.testing.fuse_requests import FuseClient


def test_readdir_lists_types_and_dots(client: FuseClient, share: Path) -> None:
    (share / "file").touch()
    (share / "dir").mkdir()
    (share / "link").symlink_to("file")
    entries = {e.name: e for e in client.listdir(ROOT_ID)}
    assert set(entries) == {b".", b"..", b"file", b"dir", b"link"}
    assert entries[b"file"].type == DT_REG
    assert entries[b"dir"].type == DT_DIR
    assert entries[b"link"].type == DT_LNK
    assert entries[b"file"].ino == (share / "file").stat().st_ino


def test_large_directory_lists_completely(client: FuseClient, share: Path) -> None:
    names = {f"entry-with-a-long-name-{i:05d}".encode() for i in range(2000)}
    for name in names:
        (share / name.decode()).touch()
    listed = [e.name for e in client.listdir(ROOT_ID, size=4096)]
    assert len(listed) == len(set(listed))
    assert set(listed) - {b".", b".."} == names


def test_listing_is_stable_while_the_directory_changes(client: FuseClient, share: Path) -> None:
    for i in range(100):
        (share / f"f{i:03d}").touch()
    fh = client.opendir(ROOT_ID)
    first = client.readdir(ROOT_ID, fh, 0, 512)
    (share / "f099").unlink()
    (share / "new").touch()
    rest: list[fr.Dirent] = []
    offset = first[-1].off
    while batch := client.readdir(ROOT_ID, fh, offset, 512):
        rest += batch
        offset = batch[-1].off
    names = [e.name for e in first + rest]
    assert len(names) == 102  # the snapshot: 100 files + dots, no duplicates, no skips
    # Offset 0 (rewinddir) takes a fresh snapshot.
    again = {e.name for e in client.readdir(ROOT_ID, fh, 0, 1 << 16)}
    assert b"new" in again
    assert b"f099" not in again


def test_readdirplus_counts_lookups_and_zeroes_dots(
    client: FuseClient, fs: PassthroughFs, share: Path
) -> None:
    for i in range(60):
        (share / f"file{i:02d}").write_bytes(b"x" * i)
    entries = client.listdir(ROOT_ID, plus=True)
    by_name = {e.name: e for e in entries}
    assert len(by_name) == 62
    assert by_name[b"."].entry is not None
    assert by_name[b"."].entry.nodeid == 0
    assert by_name[b".."].entry is not None
    assert by_name[b".."].entry.nodeid == 0
    file7 = by_name[b"file07"].entry
    assert file7 is not None
    assert file7.attr.size == 7
    # Each emitted entry is exactly one lookup: one FORGET each drops them all.
    for e in entries:
        assert e.entry is not None
        if e.entry.nodeid:
            assert fs.inodes.get(e.entry.nodeid).refcount == 1
    forgets = [(e.entry.nodeid, 1) for e in entries if e.entry is not None and e.entry.nodeid]
    client.call(fr.batch_forget(2, forgets))
    assert len(fs.inodes) == 1


def test_readdirplus_skips_names_deleted_since_listing(client: FuseClient, share: Path) -> None:
    (share / "a").touch()
    (share / "b").touch()
    fh = client.opendir(ROOT_ID)
    first = client.readdirplus(ROOT_ID, fh, 0, 160 * 2)  # just the dots
    assert [e.name for e in first] == [b".", b".."]
    (share / "a").unlink()
    rest = client.readdirplus(ROOT_ID, fh, first[-1].off)
    assert [e.name for e in rest] == [b"b"]


def test_readdirplus_small_buffer_emits_nothing_it_cannot_fit(
    client: FuseClient, fs: PassthroughFs, share: Path
) -> None:
    (share / "x").touch()
    fh = client.opendir(ROOT_ID)
    assert client.readdirplus(ROOT_ID, fh, 2, 100) == []
    assert len(fs.inodes) == 1  # no lookup was counted for an entry that did not fit


def test_readdir_on_bad_handle_is_ebadf(client: FuseClient) -> None:
    assert client.errno_of(fr.readdir(2, ROOT_ID, 12345)) == errno.EBADF


def test_opendir_on_file_is_enotdir(client: FuseClient, share: Path) -> None:
    (share / "f").touch()
    nodeid = client.lookup(ROOT_ID, "f").nodeid
    assert client.errno_of(fr.opendir(2, nodeid)) == errno.ENOTDIR
