"""The guest must not reach outside the share: symlinks, dot-dot, bad names, special files."""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from fsd.fs import PassthroughFs
from fsd.fuse.abi import ROOT_ID, Opcode
from fsd.testing import fuse_requests as fr
from fsd.testing.fuse_requests import FuseClient


def test_symlink_to_etc_is_returned_as_a_symlink(client: FuseClient, share: Path) -> None:
    (share / "etc").symlink_to("/etc")
    entry = client.lookup(ROOT_ID, "etc")
    assert stat.S_ISLNK(entry.attr.mode)
    # Looking up "passwd" under it fails: it is not a directory on our side.
    assert client.errno_of(fr.lookup(2, entry.nodeid, "passwd")) == errno.ENOTDIR
    assert client.errno_of(fr.opendir(4, entry.nodeid)) == errno.ENOTDIR
    assert client.errno_of(fr.open_(6, entry.nodeid)) == errno.ELOOP


def test_symlink_to_passwd_cannot_be_read_or_changed(client: FuseClient, share: Path) -> None:
    (share / "pw").symlink_to("/etc/passwd")
    before = os.stat("/etc/passwd")
    entry = client.lookup(ROOT_ID, "pw")
    assert stat.S_ISLNK(entry.attr.mode)
    assert client.errno_of(fr.open_(2, entry.nodeid)) == errno.ELOOP
    assert client.errno_of(fr.setattr(4, entry.nodeid, size=0)) != 0
    assert client.errno_of(fr.setattr(6, entry.nodeid, mode=0o100777)) != 0
    after = os.stat("/etc/passwd")
    assert (after.st_size, after.st_mode) == (before.st_size, before.st_mode)


def test_create_through_planted_symlink_does_not_escape(
    client: FuseClient, share: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside-target"
    (share / "trap").symlink_to(outside)
    flags = os.O_WRONLY | os.O_CREAT
    assert client.errno_of(fr.create(2, ROOT_ID, "trap", flags)) == errno.ELOOP
    assert not outside.exists()


def test_dotdot_at_root_stays_at_root(client: FuseClient, share: Path) -> None:
    assert client.lookup(ROOT_ID, "..").nodeid == ROOT_ID
    assert client.lookup(ROOT_ID, ".").nodeid == ROOT_ID
    sub = client.mkdir(ROOT_ID, "sub")
    inner = client.mkdir(sub.nodeid, "inner")
    assert client.lookup(inner.nodeid, "..").nodeid == sub.nodeid
    assert client.lookup(sub.nodeid, "..").nodeid == ROOT_ID


@pytest.mark.parametrize("name", [b"a/b", b"../x", b"/etc", b""])
def test_names_with_slash_or_empty_are_einval(client: FuseClient, name: bytes) -> None:
    assert client.errno_of(fr.lookup(2, ROOT_ID, name)) == errno.EINVAL
    assert client.errno_of(fr.create(4, ROOT_ID, name)) == errno.EINVAL
    assert client.errno_of(fr.mkdir(6, ROOT_ID, name)) == errno.EINVAL
    assert client.errno_of(fr.unlink(8, ROOT_ID, name)) == errno.EINVAL


@pytest.mark.parametrize("name", [b".", b".."])
def test_dot_names_refused_outside_lookup(client: FuseClient, name: bytes) -> None:
    assert client.errno_of(fr.unlink(2, ROOT_ID, name)) == errno.EINVAL
    assert client.errno_of(fr.rmdir(4, ROOT_ID, name)) == errno.EINVAL
    assert client.errno_of(fr.rename(6, ROOT_ID, name, ROOT_ID, "x")) == errno.EINVAL


def test_name_without_nul_is_einval(client: FuseClient) -> None:
    assert client.errno_of(fr.request(Opcode.LOOKUP, 2, ROOT_ID, b"noterminator")) == errno.EINVAL


def test_host_device_node_is_not_opened(client: FuseClient, fs: PassthroughFs, share: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mknod of a device node needs root")
    os.mknod(share / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    entry = client.lookup(ROOT_ID, "null")
    assert stat.S_ISCHR(entry.attr.mode)
    assert client.errno_of(fr.open_(2, entry.nodeid, os.O_RDWR)) == errno.EACCES
    assert len(fs.handles) == 0


def test_directory_swapped_for_a_symlink_during_lookups_never_escapes(
    client: FuseClient, share: Path, tmp_path: Path
) -> None:
    """The classic race: while the guest walks ``dir/secret``, something on the host keeps
    replacing ``dir`` with a symlink to a directory outside the share. Lookups are made
    relative to the parent's fd with O_NOFOLLOW, so the walk either finds the real directory
    or stops at the symlink; it never reads the outside file."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("OUTSIDE")
    real = share / "dir"
    real.mkdir()
    (real / "secret").write_text("inside")
    stop = threading.Event()

    def swap() -> None:
        parked = share / "parked"
        while not stop.is_set():
            os.rename(real, parked)
            os.symlink(outside, real)
            os.unlink(real)
            os.rename(parked, real)

    swapper = threading.Thread(target=swap)
    swapper.start()
    seen: set[str] = set()
    unique = 100
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            unique += 2
            dir_reply = fr.parse_reply(client.call(fr.lookup(unique, ROOT_ID, "dir")))
            if dir_reply.error:
                seen.add(f"dir:{-dir_reply.error}")
                continue
            nodeid = fr.parse_entry(dir_reply.payload).nodeid
            reply = fr.parse_reply(client.call(fr.lookup(unique + 1, nodeid, "secret")))
            if reply.error:
                seen.add(f"secret:{-reply.error}")
                continue
            secret = fr.parse_entry(reply.payload).nodeid
            fh = client.open(secret)
            seen.add(client.read(secret, fh, 0, 64).decode())
            client.ok(fr.release(unique, secret, fh))
    finally:
        stop.set()
        swapper.join()
    assert "OUTSIDE" not in seen
    assert "inside" in seen
    assert f"secret:{errno.ENOTDIR}" in seen or f"dir:{errno.ENOENT}" in seen, "no race hit"


def test_hard_links_stay_inside_the_share(client: FuseClient, share: Path, tmp_path: Path) -> None:
    """LINK only names nodeids the guest already has, into directories of the share; a link to
    a planted symlink links the symlink itself, never its target outside."""
    outside = tmp_path / "outside-file"
    outside.write_text("outside")
    (share / "to-outside").symlink_to(outside)
    (share / "d").mkdir()
    link = client.lookup(ROOT_ID, "to-outside")
    d = client.lookup(ROOT_ID, "d")
    client.ok(fr.link(2, link.nodeid, d.nodeid, "copy"))
    assert (share / "d" / "copy").is_symlink()
    assert os.stat(outside).st_nlink == 1  # the outside file gained no name
    for bad in ("../escape", "a/b", ".."):
        assert client.errno_of(fr.link(4, link.nodeid, d.nodeid, bad)) == errno.EINVAL
    assert not (tmp_path / "escape").exists()
