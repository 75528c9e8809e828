"""SETXATTR/GETXATTR/LISTXATTR/REMOVEXATTR as request bytes, checked against the host file."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from fsd.fs import FsOptions, PassthroughFs, parse_cfg
from fsd.fuse import FuseServer, abi
from fsd.fuse.abi import ROOT_ID, InitFlag, Opcode
from fsd.testing import fuse_requests as fr
from fsd.testing.fuse_requests import FuseClient


def _probe(client: FuseClient, data: bytes) -> int:
    return int(abi.GETXATTR_OUT.unpack_from(client.ok(data))[0])


def test_set_get_list_remove(client: FuseClient, share: Path) -> None:
    (share / "f").touch()
    node = client.lookup(ROOT_ID, "f").nodeid
    client.ok(fr.setxattr(2, node, "user.colour", b"blue"))
    assert os.getxattr(share / "f", "user.colour") == b"blue"
    assert _probe(client, fr.getxattr(4, node, "user.colour", 0)) == 4
    assert client.ok(fr.getxattr(6, node, "user.colour", 4)) == b"blue"
    assert client.ok(fr.getxattr(8, node, "user.colour", 100)) == b"blue"
    assert client.errno_of(fr.getxattr(10, node, "user.colour", 3)) == errno.ERANGE
    names = b"user.colour\0"
    assert _probe(client, fr.listxattr(12, node, 0)) == len(names)
    assert client.ok(fr.listxattr(14, node, 100)) == names
    assert client.errno_of(fr.listxattr(16, node, len(names) - 1)) == errno.ERANGE
    client.ok(fr.removexattr(18, node, "user.colour"))
    assert os.listxattr(share / "f") == []
    assert client.errno_of(fr.getxattr(20, node, "user.colour", 0)) == errno.ENODATA
    assert client.errno_of(fr.removexattr(22, node, "user.colour")) == errno.ENODATA
    assert _probe(client, fr.listxattr(24, node, 0)) == 0


def test_empty_and_binary_values(client: FuseClient, share: Path) -> None:
    (share / "f").touch()
    node = client.lookup(ROOT_ID, "f").nodeid
    client.ok(fr.setxattr(2, node, "user.empty", b""))
    assert _probe(client, fr.getxattr(4, node, "user.empty", 0)) == 0
    value = bytes(range(256)) * 3
    client.ok(fr.setxattr(6, node, "user.bin", value))
    assert client.ok(fr.getxattr(8, node, "user.bin", len(value))) == value


def test_create_and_replace_flags(client: FuseClient, share: Path) -> None:
    (share / "f").touch()
    node = client.lookup(ROOT_ID, "f").nodeid
    replace = os.XATTR_REPLACE
    assert client.errno_of(fr.setxattr(2, node, "user.a", b"1", replace)) == errno.ENODATA
    client.ok(fr.setxattr(4, node, "user.a", b"1", os.XATTR_CREATE))
    assert client.errno_of(fr.setxattr(6, node, "user.a", b"2", os.XATTR_CREATE)) == errno.EEXIST
    client.ok(fr.setxattr(8, node, "user.a", b"3", replace))
    assert os.getxattr(share / "f", "user.a") == b"3"
    assert client.errno_of(fr.setxattr(10, node, "user.a", b"4", 0x80)) == errno.EINVAL


def test_directory_xattrs(client: FuseClient, share: Path) -> None:
    (share / "d").mkdir()
    node = client.lookup(ROOT_ID, "d").nodeid
    client.ok(fr.setxattr(2, node, "user.d", b"dir"))
    assert os.getxattr(share / "d", "user.d") == b"dir"
    client.ok(fr.setxattr(4, ROOT_ID, "user.root", b"r"))
    assert os.getxattr(share, "user.root") == b"r"


def test_symlink_xattrs_are_not_supported(client: FuseClient, share: Path, tmp_path: Path) -> None:
    """A symlink is never opened, so its xattrs answer EOPNOTSUPP (fsd.fs.procfd): its
    target is never touched either."""
    outside = tmp_path / "outside"
    outside.touch()
    os.symlink(outside, share / "link")
    os.setxattr(share / "link", "trusted.host", b"1", follow_symlinks=False)
    node = client.lookup(ROOT_ID, "link").nodeid
    for request in (
        fr.setxattr(2, node, "trusted.fsd", b"x"),
        fr.getxattr(4, node, "trusted.host", 64),
        fr.listxattr(6, node, 100),
        fr.removexattr(8, node, "trusted.host"),
    ):
        assert client.errno_of(request) == errno.EOPNOTSUPP
    assert os.listxattr(share / "link", follow_symlinks=False) == ["trusted.host"]
    assert os.listxattr(outside) == []


def test_fifo_xattrs_do_not_open_it(client: FuseClient, share: Path) -> None:
    os.mkfifo(share / "fifo")
    node = client.lookup(ROOT_ID, "fifo").nodeid
    # Would hang if the fifo were opened.
    assert client.errno_of(fr.setxattr(2, node, "trusted.f", b"1")) == errno.EOPNOTSUPP
    assert client.errno_of(fr.listxattr(4, node, 100)) == errno.EOPNOTSUPP
    assert os.listxattr(share / "fifo") == []


def test_names_with_slashes_are_fine(client: FuseClient, share: Path) -> None:
    (share / "f").touch()
    node = client.lookup(ROOT_ID, "f").nodeid
    client.ok(fr.setxattr(2, node, "user.a/b", b"x"))
    assert os.getxattr(share / "f", "user.a/b") == b"x"


@pytest.mark.parametrize(
    ("body", "err"),
    [
        (abi.GETXATTR_IN.pack(10, 0) + b"user.x", errno.EINVAL),  # no NUL
        (abi.GETXATTR_IN.pack(10, 0) + b"\0", errno.EINVAL),  # empty name
        (abi.GETXATTR_IN.pack(10, 0) + b"user." + b"x" * 300 + b"\0", errno.ERANGE),
        (b"\0\0", errno.EINVAL),  # shorter than getxattr_in
    ],
)
def test_malformed_getxattr(client: FuseClient, share: Path, body: bytes, err: int) -> None:
    assert client.errno_of(fr.request(Opcode.GETXATTR, 2, ROOT_ID, body)) == err


def test_setxattr_value_shorter_than_size_is_einval(client: FuseClient, share: Path) -> None:
    body = abi.SETXATTR_IN.pack(100, 0) + b"user.x\0short"
    assert client.errno_of(fr.request(Opcode.SETXATTR, 2, ROOT_ID, body)) == errno.EINVAL
    assert os.listxattr(share) == []


def test_setxattr_value_too_large_is_e2big(client: FuseClient) -> None:
    body = abi.SETXATTR_IN.pack(abi.XATTR_SIZE_MAX + 1, 0) + b"user.x\0"
    assert client.errno_of(fr.request(Opcode.SETXATTR, 2, ROOT_ID, body)) == errno.E2BIG


def test_unknown_nodeid(client: FuseClient) -> None:
    assert client.errno_of(fr.getxattr(2, 999, "user.x", 0)) != 0


def test_security_capability_probe_is_enodata(client: FuseClient, share: Path) -> None:
    """What the guest asks before writes when KILLPRIV_V2 is off: one cheap ENODATA."""
    (share / "f").touch()
    node = client.lookup(ROOT_ID, "f").nodeid
    assert client.errno_of(fr.getxattr(2, node, "security.capability", 0)) == errno.ENODATA


# --- rewrite_security_xattrs ---------------------------------------------------------------


@pytest.fixture
def rewriting(share: Path) -> FuseClient:
    fs = PassthroughFs(share, parse_cfg("rewrite_security_xattrs=true"))
    client = FuseClient(FuseServer(fs))
    client.init()
    return client


def test_rewrite_security_names(rewriting: FuseClient, share: Path) -> None:
    (share / "f").touch()
    node = rewriting.lookup(ROOT_ID, "f").nodeid
    rewriting.ok(fr.setxattr(2, node, "security.fsd", b"label"))
    assert os.getxattr(share / "f", "user.virtiofs.security.fsd") == b"label"
    assert "security.fsd" not in os.listxattr(share / "f")
    assert rewriting.ok(fr.getxattr(4, node, "security.fsd", 64)) == b"label"
    assert rewriting.ok(fr.listxattr(6, node, 256)) == b"security.fsd\0"
    # The prefix itself is reserved: set EPERM, get/remove ENODATA.
    assert rewriting.errno_of(fr.setxattr(8, node, "user.virtiofs.x", b"1")) == errno.EPERM
    name = "user.virtiofs.security.fsd"
    assert rewriting.errno_of(fr.getxattr(10, node, name, 0)) == errno.ENODATA
    assert rewriting.errno_of(fr.removexattr(12, node, name)) == errno.ENODATA
    rewriting.ok(fr.removexattr(14, node, "security.fsd"))
    assert os.listxattr(share / "f") == []


def test_rewrite_leaves_user_names_alone(rewriting: FuseClient, share: Path) -> None:
    (share / "f").touch()
    node = rewriting.lookup(ROOT_ID, "f").nodeid
    rewriting.ok(fr.setxattr(2, node, "user.plain", b"p"))
    assert os.getxattr(share / "f", "user.plain") == b"p"


def test_rewrite_turns_off_killpriv_v2(share: Path) -> None:
    """A rewritten security.capability is a user.* xattr the host never drops on write."""
    fs = PassthroughFs(share, FsOptions(rewrite_security_xattrs=True))
    try:
        out = FuseClient(FuseServer(fs)).init()
        assert not out.flags & InitFlag.HANDLE_KILLPRIV_V2
    finally:
        fs.close()


# --- HANDLE_KILLPRIV_V2 --------------------------------------------------------------------


def test_killpriv_v2_granted_by_default(server: FuseServer) -> None:
    out = FuseClient(server).init()
    assert out.flags & InitFlag.HANDLE_KILLPRIV_V2
    assert not out.flags & InitFlag.SETXATTR_EXT  # only the 8-byte setxattr_in is parsed


def _suid_file(share: Path) -> Path:
    path = share / "suid"
    path.write_bytes(b"x" * 10)
    os.chmod(path, 0o6755)
    return path


def test_write_kill_suidgid(client: FuseClient, share: Path) -> None:
    path = _suid_file(share)
    node = client.lookup(ROOT_ID, "suid").nodeid
    fh = client.open(node, os.O_RDWR)
    client.write(node, fh, 0, b"y")  # root in the guest keeps the bits
    assert stat.S_IMODE(path.stat().st_mode) == 0o6755
    body = abi.WRITE_IN.pack(fh, 0, 1, abi.WRITE_KILL_SUIDGID, 0, 0, 0) + b"z"
    client.ok(fr.request(Opcode.WRITE, 4, node, body))
    assert stat.S_IMODE(path.stat().st_mode) == 0o755


def test_write_kill_keeps_sgid_without_group_exec(client: FuseClient, share: Path) -> None:
    """Set-group-ID without group execute is mandatory locking, not privilege: it stays."""
    path = _suid_file(share)
    os.chmod(path, 0o6744)
    node = client.lookup(ROOT_ID, "suid").nodeid
    fh = client.open(node, os.O_RDWR)
    body = abi.WRITE_IN.pack(fh, 0, 1, abi.WRITE_KILL_SUIDGID, 0, 0, 0) + b"z"
    client.ok(fr.request(Opcode.WRITE, 4, node, body))
    assert stat.S_IMODE(path.stat().st_mode) == 0o2744


def test_setattr_kill_suidgid(client: FuseClient, share: Path) -> None:
    path = _suid_file(share)
    node = client.lookup(ROOT_ID, "suid").nodeid
    body = bytearray(fr.setattr(2, node, size=3))
    valid = abi.FATTR_SIZE | abi.FATTR_KILL_SUIDGID
    abi.SETATTR_IN.pack_into(
        body, abi.IN_HEADER.size, valid, *abi.SETATTR_IN.unpack_from(body, 40)[1:]
    )
    attr = fr.parse_attr_out(client.ok(bytes(body)))[2]
    assert stat.S_IMODE(attr.mode) == 0o755
    assert path.stat().st_size == 3


def test_open_trunc_kill_suidgid(client: FuseClient, share: Path) -> None:
    path = _suid_file(share)
    node = client.lookup(ROOT_ID, "suid").nodeid
    body = abi.OPEN_IN.pack(os.O_WRONLY | os.O_TRUNC, abi.OPEN_KILL_SUIDGID)
    client.ok(fr.request(Opcode.OPEN, 2, node, body))
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    assert path.stat().st_size == 0
