"""TMPFILE, IOCTL, fifo and socket MKNOD, STATX and the --cfg keys fsd refuses (device nodes and
RENAME_WHITEOUT: test_device_nodes.py)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from fsd.fs import FsOptions, parse_cfg
from fsd.fuse import abi
from fsd.fuse.abi import ROOT_ID, Opcode
from fsd.testing import fuse_requests as fr
from fsd.testing.fuse_requests import FuseClient
from fsd.testing.mount import devfuse_unavailable, mounted


def _tmpfile(client: FuseClient, flags: int = os.O_RDWR, mode: int = 0o100640) -> bytes:
    body = abi.CREATE_IN.pack(flags, mode, 0, 0) + b"/\0"
    return fr.request(Opcode.TMPFILE, client.next_unique(), ROOT_ID, body)


def test_tmpfile_is_unnamed_until_linked(client: FuseClient, share: Path) -> None:
    payload = client.ok(_tmpfile(client))
    entry = fr.parse_entry(payload)
    fh = fr.parse_open(payload, abi.ENTRY_OUT.size)[0]
    assert stat.S_ISREG(entry.attr.mode) and stat.S_IMODE(entry.attr.mode) == 0o640
    assert entry.attr.nlink == 0
    assert os.listdir(share) == []
    client.write(entry.nodeid, fh, 0, b"scratch")
    client.ok(fr.link(client.next_unique(), entry.nodeid, ROOT_ID, "kept"))
    assert (share / "kept").read_bytes() == b"scratch"
    client.ok(fr.release(client.next_unique(), entry.nodeid, fh))


def test_tmpfile_excl_cannot_be_linked(client: FuseClient, share: Path) -> None:
    entry = fr.parse_entry(client.ok(_tmpfile(client, os.O_RDWR | os.O_EXCL)))
    assert client.errno_of(fr.link(client.next_unique(), entry.nodeid, ROOT_ID, "x")) == (
        errno.ENOENT
    )
    assert os.listdir(share) == []


def test_tmpfile_read_only_is_einval(client: FuseClient) -> None:
    assert client.errno_of(_tmpfile(client, os.O_RDONLY)) == errno.EINVAL


def test_tmpfile_through_the_host_kernel(share: Path) -> None:
    reason = devfuse_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with mounted(share) as mount:
        fd = os.open(mount.mountpoint, os.O_TMPFILE | os.O_RDWR, 0o600)
        dirfd = os.open(mount.mountpoint, os.O_RDONLY)
        try:
            os.write(fd, b"from O_TMPFILE")
            assert os.listdir(share) == []
            os.link(f"/proc/self/fd/{fd}", "named", dst_dir_fd=dirfd, follow_symlinks=True)
        finally:
            os.close(fd)
            os.close(dirfd)
        assert (share / "named").read_bytes() == b"from O_TMPFILE"


def test_ioctl_is_enotty(client: FuseClient, share: Path) -> None:
    (share / "f").touch()
    node = client.lookup(ROOT_ID, "f").nodeid
    fh = client.open(node)
    body = abi.IOCTL_IN.pack(fh, 0, 0x80086601, 0, 0, 8)  # FS_IOC_GETFLAGS
    assert client.errno_of(fr.request(Opcode.IOCTL, 2, node, body)) == errno.ENOTTY


def test_mknod_fifo_and_socket(client: FuseClient, share: Path) -> None:
    client.ok(fr.mknod(2, ROOT_ID, "fifo", stat.S_IFIFO | 0o600))
    client.ok(fr.mknod(4, ROOT_ID, "sock", stat.S_IFSOCK | 0o600))
    assert stat.S_ISFIFO((share / "fifo").lstat().st_mode)
    assert stat.S_ISSOCK((share / "sock").lstat().st_mode)


@pytest.mark.parametrize("opcode", [Opcode.BMAP, Opcode.POLL, Opcode.SETUPMAPPING])
def test_unimplemented_ops_are_enosys(client: FuseClient, opcode: Opcode) -> None:
    """ENOSYS makes the kernel stop asking."""
    assert client.errno_of(fr.request(opcode, 2, ROOT_ID, bytes(64))) == errno.ENOSYS


def test_copy_file_range(client: FuseClient, share: Path) -> None:
    (share / "src").write_bytes(b"0123456789")
    (share / "dst").touch()
    src = client.lookup(ROOT_ID, "src").nodeid
    dst = client.lookup(ROOT_ID, "dst").nodeid
    fh_in = client.open(src)
    fh_out = client.open(dst, os.O_RDWR)
    req = fr.copy_file_range(2, src, fh_in, 2, dst, fh_out, 1, 5)
    assert fr.parse_write(client.ok(req)) == 5
    assert (share / "dst").read_bytes() == b"\0" + b"23456"


# --- --cfg ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "posix_acl=false",
        "security_ctx=false",
        "ascii_casefold=false",
        "dax=false",
        "posix_acl=0,security-ctx=no",
    ],
)
def test_cfg_accepts_features_turned_off(text: str) -> None:
    assert parse_cfg(text) == FsOptions()


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("security_ctx=true", "security contexts"),
        ("ascii_casefold,negative_timeout=1", "negative_timeout cannot be used"),
        ("use_dax=1", "DAX"),
        ("posix_acl=maybe", "posix_acl must be true or false"),
    ],
)
def test_cfg_rejects_unsupported_features_clearly(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_cfg(text)


def test_cfg_rewrite_security_xattrs() -> None:
    assert parse_cfg("rewrite-security-xattrs").rewrite_security_xattrs is True
    assert parse_cfg("rewrite_security_xattrs=false").rewrite_security_xattrs is False
    with pytest.raises(ValueError, match="true or false"):
        parse_cfg("rewrite_security_xattrs=perhaps")
