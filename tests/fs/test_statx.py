"""STATX (protocol 7.39): GETATTR's attributes in the statx(2) layout, plus the birth time."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from fsd.fs import FsOptions, PassthroughFs, linux
from fsd.fs.idmap import IdMaps, parse_idmap
from fsd.fuse import FuseServer, abi
from fsd.fuse.abi import ROOT_ID, Opcode
from fsd.testing import fuse_requests as fr
from fsd.testing.fuse_requests import FuseClient


def _statx(client: FuseClient, nodeid: int) -> tuple[int, ...]:
    body = abi.STATX_IN.pack(0, 0, 0, 0, abi.STATX_BASIC_STATS | abi.STATX_BTIME)
    reply = fr.parse_reply(
        client.call(fr.request(Opcode.STATX, client.next_unique(), nodeid, body))
    )
    assert reply.error == 0, os.strerror(-reply.error)
    assert reply.length == abi.OUT_HEADER.size + abi.STATX_OUT.size
    return abi.STATX_OUT.unpack(reply.payload)


def test_statx_matches_the_host(client: FuseClient, share: Path) -> None:
    (share / "f").write_bytes(b"12345")
    nodeid = client.lookup(ROOT_ID, "f").nodeid
    (valid, _valid_ns, _flags, mask, blksize, attributes, nlink, uid, gid, mode, ino, size,
     blocks, _attr_mask, a_s, a_ns, b_s, b_ns, c_s, c_ns, m_s, m_ns, rdev_major, rdev_minor,
     _dev_major, _dev_minor) = _statx(client, nodeid)  # fmt: skip
    st = os.lstat(share / "f")
    assert valid == 5  # the default attribute timeout, as in GETATTR
    assert (ino, size, blocks, mode, nlink, uid, gid) == (
        st.st_ino, 5, st.st_blocks, st.st_mode, st.st_nlink, st.st_uid, st.st_gid,
    )  # fmt: skip
    assert blksize == st.st_blksize
    assert attributes == 0
    assert (rdev_major, rdev_minor) == (0, 0)
    assert a_s * 10**9 + a_ns == st.st_atime_ns
    assert m_s * 10**9 + m_ns == st.st_mtime_ns
    assert c_s * 10**9 + c_ns == st.st_ctime_ns
    fd = os.open(share / "f", os.O_PATH)
    try:
        btime = linux.birth_time(fd)
    finally:
        os.close(fd)
    assert mask & abi.STATX_BASIC_STATS == abi.STATX_BASIC_STATS
    if btime is None:  # a host filesystem without birth times
        assert not mask & abi.STATX_BTIME
    else:
        assert mask & abi.STATX_BTIME
        assert (b_s, b_ns) == btime


def test_statx_of_a_symlink_is_its_own(client: FuseClient, share: Path) -> None:
    os.symlink("/etc/passwd", share / "link")
    nodeid = client.lookup(ROOT_ID, "link").nodeid
    values = _statx(client, nodeid)
    assert values[9] == os.lstat(share / "link").st_mode  # mode: a symlink, not its target
    assert values[10] == os.lstat(share / "link").st_ino


def test_statx_unknown_node_and_short_request(client: FuseClient) -> None:
    body = abi.STATX_IN.pack(0, 0, 0, 0, abi.STATX_BTIME)
    assert client.errno_of(fr.request(Opcode.STATX, client.next_unique(), 999, body)) != 0
    short = fr.request(Opcode.STATX, client.next_unique(), ROOT_ID, body[:8])
    assert client.errno_of(short) == errno.EINVAL


def test_statx_reports_guest_ids_under_id_maps(share: Path) -> None:
    (share / "f").touch()
    os.chown(share / "f", 2000, 2000)
    maps = IdMaps(parse_idmap("0 0 1,1000 2000 1"), parse_idmap("0 0 1,1000 2000 1"))
    fs = PassthroughFs(share, FsOptions(id_maps=maps))
    try:
        client = FuseClient(FuseServer(fs))
        client.init()
        values = _statx(client, client.lookup(ROOT_ID, "f").nodeid)
        assert (values[7], values[8]) == (1000, 1000)
    finally:
        fs.close()
