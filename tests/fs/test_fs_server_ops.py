"""FUSE requests as bytes → FuseServer → PassthroughFs on a tmp dir: replies and host effects."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from fsd.fs import PassthroughFs
from fsd.fuse import FuseServer, abi
from fsd.fuse.abi import ROOT_ID, InitFlag, Opcode
from fsd.testing import fuse_requests as fr
from fsd.testing.fuse_requests import FuseClient


def test_request_before_init_is_eio(server: FuseServer) -> None:
    c = FuseClient(server)
    assert c.errno_of(fr.getattr(2, ROOT_ID)) == errno.EIO


def test_init_reply_is_80_bytes(server: FuseServer) -> None:
    c = FuseClient(server)
    reply = fr.parse_reply(c.call(fr.init_request(2)))
    assert reply.length == 80
    assert reply.unique == 2
    out = fr.parse_init(reply.payload)
    assert (out.major, out.minor, out.max_write, out.max_pages) == (7, 38, 1 << 20, 256)
    locks = InitFlag.POSIX_LOCKS | InitFlag.FLOCK_LOCKS
    granted = 0x44F029 | locks | InitFlag.HANDLE_KILLPRIV_V2 | InitFlag.INIT_EXT
    assert out.flags == granted  # INIT_EXT: the reply's flags2 counts (CREATE_SUPP_GROUP...)


@pytest.mark.parametrize("size", [8, 16])
def test_short_init_in_from_old_kernels(server: FuseServer, size: int) -> None:
    body = abi.INIT_IN.pack(7, 31, 65536, 0x44F029, 0)[:size]
    reply = fr.parse_reply(FuseClient(server).call(fr.request(Opcode.INIT, 2, 0, body)))
    assert reply.error == 0
    assert fr.parse_init(reply.payload).minor == 31


def test_init_major_6_is_eproto(server: FuseServer) -> None:
    assert FuseClient(server).errno_of(fr.init_request(2, major=6)) == errno.EPROTO


def test_getattr_root(client: FuseClient, share: Path) -> None:
    reply = fr.parse_reply(client.call(fr.getattr(4, ROOT_ID)))
    assert reply.length == 120
    attr = fr.parse_attr_out(reply.payload)[2]
    assert attr.ino == share.stat().st_ino
    assert stat.S_ISDIR(attr.mode)


def test_lookup_reply_is_144_bytes_with_timeouts(client: FuseClient, share: Path) -> None:
    (share / "f").write_bytes(b"abc")
    reply = fr.parse_reply(client.call(fr.lookup(6, ROOT_ID, "f")))
    assert reply.length == 144
    entry = fr.parse_entry(reply.payload)
    assert entry.nodeid > ROOT_ID
    assert (entry.entry_valid, entry.attr_valid) == (5, 5)
    assert entry.attr.size == 3
    assert entry.attr.ino == (share / "f").stat().st_ino


def test_lookup_same_file_twice_gives_same_nodeid(client: FuseClient, share: Path) -> None:
    (share / "f").touch()
    os.link(share / "f", share / "g")
    assert client.lookup(ROOT_ID, "f").nodeid == client.lookup(ROOT_ID, "g").nodeid


def test_lookup_missing_is_enoent(client: FuseClient) -> None:
    assert client.errno_of(fr.lookup(8, ROOT_ID, "missing")) == errno.ENOENT


def test_unknown_opcode_is_enosys(client: FuseClient) -> None:
    assert client.errno_of(fr.request(9999, 8, ROOT_ID)) == errno.ENOSYS
    assert client.errno_of(fr.request(Opcode.BMAP, 10, ROOT_ID, bytes(16))) == errno.ENOSYS


def test_create_write_read_roundtrip(client: FuseClient, share: Path) -> None:
    entry, fh = client.create(ROOT_ID, "file", os.O_RDWR)
    assert stat.S_IMODE(entry.attr.mode) == 0o644
    assert client.write(entry.nodeid, fh, 0, b"hello ") == 6
    assert client.write(entry.nodeid, fh, 6, b"world") == 5
    assert client.read(entry.nodeid, fh, 0, 4096) == b"hello world"
    assert client.read(entry.nodeid, fh, 6, 3) == b"wor"
    assert client.read(entry.nodeid, fh, 100, 10) == b""
    client.ok(fr.flush(client.next_unique(), entry.nodeid, fh))
    client.ok(fr.fsync(client.next_unique(), entry.nodeid, fh, datasync=True))
    client.ok(fr.release(client.next_unique(), entry.nodeid, fh))
    assert (share / "file").read_bytes() == b"hello world"
    assert client.errno_of(fr.read(2, entry.nodeid, fh, 0, 10)) == errno.EBADF


def test_scattered_write_and_read(client: FuseClient, share: Path) -> None:
    """Requests split into small segments (as virtqueue descriptors are) still work."""
    entry, fh = client.create(ROOT_ID, "big", os.O_RDWR)
    data = os.urandom(300_000)
    reply = fr.parse_reply(client.call(fr.write(4, entry.nodeid, fh, 0, data), split=4096))
    assert fr.parse_write(reply.payload) == len(data)
    assert (share / "big").read_bytes() == data
    assert client.read(entry.nodeid, fh, 0, len(data)) == data


def test_read_is_clamped_to_reply_space(client: FuseClient, share: Path) -> None:
    (share / "f").write_bytes(b"x" * 1000)
    nodeid = client.lookup(ROOT_ID, "f").nodeid
    fh = client.open(nodeid)
    reply = fr.parse_reply(client.call(fr.read(4, nodeid, fh, 0, 1000), capacity=16 + 100))
    assert reply.payload == b"x" * 100


def test_create_exclusive_existing_is_eexist(client: FuseClient, share: Path) -> None:
    (share / "f").touch()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    assert client.errno_of(fr.create(4, ROOT_ID, "f", flags)) == errno.EEXIST


def test_create_existing_without_excl_opens_it(client: FuseClient, share: Path) -> None:
    (share / "f").write_bytes(b"old")
    entry, fh = client.create(ROOT_ID, "f", os.O_RDWR | os.O_TRUNC)
    assert entry.attr.size == 0  # the attributes after the truncation, not before
    assert (share / "f").read_bytes() == b""
    client.write(entry.nodeid, fh, 0, b"new!")
    assert (share / "f").read_bytes() == b"new!"


def test_create_owner_is_the_caller(client: FuseClient, share: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give files away")
    payload = client.ok(fr.create(4, ROOT_ID, "f", os.O_WRONLY | os.O_CREAT, uid=1234, gid=99))
    assert fr.parse_entry(payload).attr.uid == 1234
    st = (share / "f").stat()
    assert (st.st_uid, st.st_gid) == (1234, 99)
    client.ok(fr.mkdir(6, ROOT_ID, "d", uid=1234, gid=99))
    assert (share / "d").stat().st_uid == 1234


def test_open_strips_o_direct(client: FuseClient, share: Path) -> None:
    (share / "f").write_bytes(b"data")
    nodeid = client.lookup(ROOT_ID, "f").nodeid
    fh = client.open(nodeid, os.O_RDONLY | os.O_DIRECT)
    assert client.read(nodeid, fh, 0, 3) == b"dat"


def test_mkdir_rmdir_and_errnos(client: FuseClient, share: Path) -> None:
    entry = client.mkdir(ROOT_ID, "d", 0o750)
    assert stat.S_ISDIR(entry.attr.mode)
    assert stat.S_IMODE((share / "d").stat().st_mode) == 0o750
    assert client.errno_of(fr.mkdir(4, ROOT_ID, "d")) == errno.EEXIST
    client.create(entry.nodeid, "inner")
    assert client.errno_of(fr.rmdir(6, ROOT_ID, "d")) == errno.ENOTEMPTY
    client.ok(fr.unlink(8, entry.nodeid, "inner"))
    client.ok(fr.rmdir(10, ROOT_ID, "d"))
    assert not (share / "d").exists()
    assert client.errno_of(fr.rmdir(12, ROOT_ID, "d")) == errno.ENOENT
    assert client.errno_of(fr.unlink(14, ROOT_ID, "nothing")) == errno.ENOENT


def test_rename_moves_and_tracks_paths(client: FuseClient, fs: PassthroughFs, share: Path) -> None:
    a = client.mkdir(ROOT_ID, "a")
    b = client.mkdir(ROOT_ID, "b")
    sub = client.mkdir(a.nodeid, "sub")
    f, _fh = client.create(sub.nodeid, "f")
    assert fs.inodes.get(f.nodeid).path == b"a/sub/f"
    client.ok(fr.rename(4, a.nodeid, "sub", b.nodeid, "moved"))
    assert (share / "b" / "moved" / "f").exists()
    assert fs.inodes.get(sub.nodeid).path == b"b/moved"
    assert fs.inodes.get(f.nodeid).path == b"b/moved/f"
    assert client.errno_of(fr.rename(6, a.nodeid, "gone", b.nodeid, "x")) == errno.ENOENT


def test_rename2_noreplace_and_exchange(client: FuseClient, fs: PassthroughFs, share: Path) -> None:
    (share / "x").write_bytes(b"x")
    (share / "y").write_bytes(b"y")
    x = client.lookup(ROOT_ID, "x").nodeid
    y = client.lookup(ROOT_ID, "y").nodeid
    noreplace = fr.rename2(4, ROOT_ID, "x", ROOT_ID, "y", abi.RENAME_NOREPLACE)
    assert client.errno_of(noreplace) == errno.EEXIST
    client.ok(fr.rename2(6, ROOT_ID, "x", ROOT_ID, "y", abi.RENAME_EXCHANGE))
    assert (share / "x").read_bytes() == b"y"
    assert fs.inodes.get(x).path == b"y"
    assert fs.inodes.get(y).path == b"x"
    assert client.errno_of(fr.rename2(8, ROOT_ID, "x", ROOT_ID, "z", 1 << 10)) == errno.EINVAL


def test_setattr_mode_size_times_owner(client: FuseClient, share: Path) -> None:
    (share / "f").write_bytes(b"0123456789")
    nodeid = client.lookup(ROOT_ID, "f").nodeid
    payload = client.ok(fr.setattr(4, nodeid, mode=0o100600, size=4))
    attr = fr.parse_attr_out(payload)[2]
    assert stat.S_IMODE(attr.mode) == 0o600
    assert attr.size == 4
    assert (share / "f").read_bytes() == b"0123"
    client.ok(fr.setattr(6, nodeid, atime_ns=1_000_000_001, mtime_ns=2_000_000_002))
    st = (share / "f").stat()
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_001, 2_000_000_002)
    client.ok(fr.setattr(8, nodeid, mtime_now=True))
    st = (share / "f").stat()
    assert st.st_atime_ns == 1_000_000_001
    assert st.st_mtime_ns > 2_000_000_002
    if os.geteuid() == 0:
        client.ok(fr.setattr(10, nodeid, uid=4321, gid=77))
        assert ((share / "f").stat().st_uid, (share / "f").stat().st_gid) == (4321, 77)


def test_setattr_size_through_fh(client: FuseClient, share: Path) -> None:
    entry, fh = client.create(ROOT_ID, "f")
    client.write(entry.nodeid, fh, 0, b"abcdef")
    client.ok(fr.setattr(4, entry.nodeid, size=2, fh=fh))
    assert (share / "f").read_bytes() == b"ab"


def test_statfs(client: FuseClient, share: Path) -> None:
    reply = fr.parse_reply(client.call(fr.statfs(4)))
    assert reply.length == 96
    blocks, _bfree, _bavail, _files, _ffree, bsize, namelen, _frsize = fr.parse_statfs(
        reply.payload
    )
    sv = os.statvfs(share)
    assert (blocks, bsize, namelen) == (sv.f_blocks, sv.f_bsize, sv.f_namemax)


def test_access_checks_mode_bits_for_the_caller(client: FuseClient, share: Path) -> None:
    (share / "f").write_bytes(b"")
    os.chmod(share / "f", 0o640)
    if os.geteuid() == 0:
        os.chown(share / "f", 1000, 1000)
    nodeid = client.lookup(ROOT_ID, "f").nodeid
    st = (share / "f").stat()
    assert client.errno_of(fr.access(4, nodeid, os.R_OK | os.W_OK, uid=st.st_uid)) == 0
    assert client.errno_of(fr.access(6, nodeid, os.X_OK, uid=st.st_uid)) == errno.EACCES
    assert client.errno_of(fr.access(8, nodeid, os.R_OK, uid=5555, gid=st.st_gid)) == 0
    assert client.errno_of(fr.access(10, nodeid, os.W_OK, uid=5555, gid=st.st_gid)) == (
        errno.EACCES
    )
    assert client.errno_of(fr.access(12, nodeid, os.R_OK, uid=5555, gid=5555)) == errno.EACCES
    assert client.errno_of(fr.access(14, nodeid, os.R_OK | os.W_OK, uid=0)) == 0


def test_forget_drops_inode_and_closes_fd(
    client: FuseClient, fs: PassthroughFs, share: Path
) -> None:
    (share / "f").touch()
    nodeid = client.lookup(ROOT_ID, "f").nodeid
    client.lookup(ROOT_ID, "f")
    assert client.call(fr.forget(4, nodeid, 1)) == b""
    assert fs.inodes.get(nodeid).refcount == 1
    assert client.call(fr.batch_forget(6, [(nodeid, 1)])) == b""
    assert client.errno_of(fr.getattr(8, nodeid)) == errno.EBADF
    # Forgetting the root or an unknown node is harmless.
    assert client.call(fr.batch_forget(10, [(ROOT_ID, 5), (999, 1)])) == b""
    assert client.getattr(ROOT_ID)


def test_destroy_drops_everything_and_needs_new_init(
    client: FuseClient, fs: PassthroughFs, share: Path
) -> None:
    (share / "f").touch()
    nodeid = client.lookup(ROOT_ID, "f").nodeid
    client.open(nodeid)
    client.opendir(ROOT_ID)
    assert client.call(fr.destroy(4)) == b""  # virtiofs: no reply
    assert len(fs.inodes) == 1
    assert len(fs.handles) == 0
    assert client.errno_of(fr.getattr(6, ROOT_ID)) == errno.EIO
    client.init()
    assert client.getattr(ROOT_ID)


def test_destroy_on_dev_fuse_is_answered(fs: PassthroughFs) -> None:
    c = FuseClient(FuseServer(fs, transport="dev-fuse"))
    c.init()
    assert fr.parse_reply(c.call(fr.destroy(4))).error == 0


def test_interrupt_gets_no_reply(client: FuseClient) -> None:
    assert client.call(fr.interrupt(3, 2)) == b""


def test_syncfs_fallocate_lseek_copy_file_range(client: FuseClient, share: Path) -> None:
    client.ok(fr.syncfs(4))
    src, fh_src = client.create(ROOT_ID, "src")
    client.write(src.nodeid, fh_src, 0, b"0123456789")
    dst, fh_dst = client.create(ROOT_ID, "dst")
    copied = fr.parse_write(
        client.ok(fr.copy_file_range(6, src.nodeid, fh_src, 2, dst.nodeid, fh_dst, 0, 5))
    )
    assert copied == 5
    assert (share / "dst").read_bytes() == b"23456"
    client.ok(fr.fallocate(8, dst.nodeid, fh_dst, 0, 8192))
    assert (share / "dst").stat().st_size == 8192
    payload = client.ok(fr.lseek(10, src.nodeid, fh_src, 0, os.SEEK_DATA))
    assert abi.LSEEK_OUT.unpack(payload)[0] == 0
    dirfh = client.opendir(ROOT_ID)
    client.ok(fr.fsyncdir(12, ROOT_ID, dirfh))


def test_symlink_readlink_link_mknod(client: FuseClient, share: Path) -> None:
    entry = fr.parse_entry(client.ok(fr.symlink(4, ROOT_ID, "ln", "../outside/target")))
    assert stat.S_ISLNK(entry.attr.mode)
    assert os.readlink(share / "ln") == "../outside/target"
    assert client.ok(fr.readlink(6, entry.nodeid)) == b"../outside/target"
    f, _ = client.create(ROOT_ID, "f")
    linked = fr.parse_entry(client.ok(fr.link(8, f.nodeid, ROOT_ID, "f2")))
    assert linked.nodeid == f.nodeid
    assert linked.attr.nlink == 2
    fifo = fr.parse_entry(client.ok(fr.mknod(10, ROOT_ID, "fifo", stat.S_IFIFO | 0o600)))
    assert stat.S_ISFIFO(fifo.attr.mode)
    # A fifo in the share is never opened by the daemon (it would block it).
    assert client.errno_of(fr.open_(14, fifo.nodeid, os.O_RDONLY)) == errno.EACCES
