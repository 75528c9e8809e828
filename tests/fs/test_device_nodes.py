"""Device nodes and overlayfs whiteouts, through request bytes: MKNOD of character and block
devices (the wire's device number decoded), RENAME2 with RENAME_WHITEOUT, rename and unlink of
device nodes, the ``devices=false`` option, and that the daemon never opens one
(CVE-2020-35517)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fsd.fs import FsOptions, PassthroughFs, parse_cfg
from fsd.fs.idmap import IdMaps, parse_idmap
from fsd.fuse import FuseServer, abi
from fsd.fuse.abi import ROOT_ID, Opcode
from fsd.fuse.codec import decode_device
from fsd.testing import fuse_requests as fr
from fsd.testing.fuse_requests import FuseClient

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a device node needs root")


def new_encode_dev(major: int, minor: int) -> int:
    """The kernel's ``new_encode_dev`` (include/linux/kdev_t.h), as FUSE carries ``rdev``."""
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


@given(st.integers(0, 0xFFF), st.integers(0, 0xFFFFF))
def test_decode_device_inverts_new_encode_dev(major: int, minor: int) -> None:
    dev = decode_device(new_encode_dev(major, minor))
    assert (os.major(dev), os.minor(dev)) == (major, minor)


def _mknod(client: FuseClient, name: str, kind: int, major: int, minor: int) -> fr.Entry:
    req = fr.mknod(client.next_unique(), ROOT_ID, name, kind | 0o640, new_encode_dev(major, minor))
    return fr.parse_entry(client.ok(req))


@needs_root
@pytest.mark.parametrize(
    ("kind", "major", "minor"),
    [
        (stat.S_IFCHR, 1, 3),  # /dev/null
        (stat.S_IFCHR, 0, 0),  # an overlayfs whiteout
        (stat.S_IFBLK, 7, 0),  # /dev/loop0
        (stat.S_IFBLK, 259, 70000),  # a 12-bit major, a minor beyond 8 bits
    ],
)
def test_mknod_device_node(
    client: FuseClient, fs: PassthroughFs, share: Path, kind: int, major: int, minor: int
) -> None:
    entry = _mknod(client, "dev", kind, major, minor)
    host = (share / "dev").lstat()
    assert stat.S_IFMT(host.st_mode) == kind and stat.S_IMODE(host.st_mode) == 0o640
    assert (os.major(host.st_rdev), os.minor(host.st_rdev)) == (major, minor)
    assert stat.S_IFMT(entry.attr.mode) == kind
    assert entry.attr.rdev == new_encode_dev(major, minor)  # what the guest kernel decodes
    # Made, but never opened by the daemon: not for reading, writing or as a directory.
    for flags in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR):
        assert client.errno_of(fr.open_(client.next_unique(), entry.nodeid, flags)) == (
            errno.EACCES
        )
    assert client.errno_of(fr.opendir(client.next_unique(), entry.nodeid)) == errno.ENOTDIR
    assert len(fs.handles) == 0


@needs_root
def test_device_nodes_rename_and_unlink(client: FuseClient, share: Path) -> None:
    chr_dev = _mknod(client, "c", stat.S_IFCHR, 1, 3)
    _mknod(client, "b", stat.S_IFBLK, 7, 1)
    sub = client.mkdir(ROOT_ID, "sub")
    client.ok(fr.rename(client.next_unique(), ROOT_ID, "c", sub.nodeid, "c2"))
    client.ok(fr.rename2(client.next_unique(), ROOT_ID, "b", ROOT_ID, "b2", abi.RENAME_NOREPLACE))
    moved = (share / "sub" / "c2").lstat()
    assert stat.S_ISCHR(moved.st_mode) and moved.st_rdev == os.makedev(1, 3)
    assert stat.S_ISBLK((share / "b2").lstat().st_mode)
    assert client.getattr(chr_dev.nodeid).rdev == new_encode_dev(1, 3)  # the inode moved with it
    client.ok(fr.unlink(client.next_unique(), sub.nodeid, "c2"))
    client.ok(fr.unlink(client.next_unique(), ROOT_ID, "b2"))
    assert sorted(os.listdir(share)) == ["sub"] and os.listdir(share / "sub") == []


def test_rename_whiteout_leaves_a_whiteout(client: FuseClient, share: Path) -> None:
    """overlayfs renames an upper file away this way; the kernel allows it without CAP_MKNOD."""
    (share / "a").write_text("moved")
    a = client.lookup(ROOT_ID, "a")
    client.ok(fr.rename2(client.next_unique(), ROOT_ID, "a", ROOT_ID, "b", abi.RENAME_WHITEOUT))
    assert (share / "b").read_text() == "moved"
    whiteout = (share / "a").lstat()
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert client.getattr(a.nodeid).ino == (share / "b").stat().st_ino
    entry = client.lookup(ROOT_ID, "a")
    assert stat.S_ISCHR(entry.attr.mode) and entry.attr.rdev == 0
    assert client.errno_of(fr.open_(client.next_unique(), entry.nodeid)) == errno.EACCES


def test_rename_whiteout_with_exchange_is_einval(client: FuseClient, share: Path) -> None:
    (share / "a").touch()
    (share / "b").touch()
    flags = abi.RENAME_WHITEOUT | abi.RENAME_EXCHANGE
    assert client.errno_of(fr.rename2(2, ROOT_ID, "a", ROOT_ID, "b", flags)) == errno.EINVAL
    assert sorted(os.listdir(share)) == ["a", "b"]


def test_unknown_rename_flags_are_einval(client: FuseClient, share: Path) -> None:
    (share / "a").touch()
    assert client.errno_of(fr.rename2(2, ROOT_ID, "a", ROOT_ID, "b", 1 << 3)) == errno.EINVAL
    assert os.listdir(share) == ["a"]


def test_mknod_of_a_directory_or_symlink_type_is_eperm(client: FuseClient, share: Path) -> None:
    for kind in (stat.S_IFDIR, stat.S_IFLNK):
        assert client.errno_of(fr.mknod(client.next_unique(), ROOT_ID, "x", kind | 0o755)) == (
            errno.EPERM
        )
    assert os.listdir(share) == []


def test_fifo_rdev_is_ignored(client: FuseClient, share: Path) -> None:
    client.ok(fr.mknod(2, ROOT_ID, "fifo", stat.S_IFIFO | 0o600, new_encode_dev(1, 3)))
    assert (share / "fifo").lstat().st_rdev == 0


def test_unprivileged_caller_cannot_make_a_device(client: FuseClient, share: Path) -> None:
    """The host kernel checks CAP_MKNOD as the caller: a guest user's request fails even if
    its own kernel let it through; a whiteout needs no privilege."""
    if os.geteuid() != 0:
        pytest.skip("the daemon must be root to act as another user")
    os.chmod(share, 0o777)
    body = abi.MKNOD_IN.pack(stat.S_IFCHR | 0o600, new_encode_dev(1, 3), 0, 0) + b"dev\0"
    req = fr.request(Opcode.MKNOD, client.next_unique(), ROOT_ID, body, uid=1000, gid=1000)
    assert client.errno_of(req) == errno.EPERM
    body = abi.MKNOD_IN.pack(stat.S_IFCHR | 0o600, 0, 0, 0) + b"wh\0"
    req = fr.request(Opcode.MKNOD, client.next_unique(), ROOT_ID, body, uid=1000, gid=1000)
    assert client.errno_of(req) == 0
    assert (share / "wh").lstat().st_uid == 1000
    assert os.listdir(share) == ["wh"]


@pytest.fixture
def mapped_client(share: Path, daemon_umask: None) -> Iterator[FuseClient]:
    """Guest root is host uid/gid 2000: not root on the host."""
    maps = IdMaps(parse_idmap("0 2000 1"), parse_idmap("0 2000 1"))
    fs = PassthroughFs(share, FsOptions(id_maps=maps))
    client = FuseClient(FuseServer(fs))
    client.init()
    yield client
    fs.close()


def test_mapped_guest_root_cannot_make_a_device(mapped_client: FuseClient, share: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the daemon must be root to act as another user")
    os.chmod(share, 0o777)
    req = fr.mknod(2, ROOT_ID, "dev", stat.S_IFBLK | 0o600, new_encode_dev(7, 0))
    assert mapped_client.errno_of(req) == errno.EPERM
    assert os.listdir(share) == []


# --- devices=false ---------------------------------------------------------------------------


@pytest.fixture
def no_devices(share: Path, daemon_umask: None) -> Iterator[FuseClient]:
    fs = PassthroughFs(share, parse_cfg("devices=false"))
    client = FuseClient(FuseServer(fs))
    client.init()
    yield client
    fs.close()


def test_cfg_devices_key() -> None:
    assert FsOptions().devices is True
    assert parse_cfg("devices=false").devices is False
    assert parse_cfg("devices").devices is True
    with pytest.raises(ValueError, match="devices must be true or false"):
        parse_cfg("devices=maybe")


@pytest.mark.parametrize(("kind", "major", "minor"), [(stat.S_IFCHR, 1, 3), (stat.S_IFBLK, 0, 0)])
def test_devices_false_refuses_device_nodes(
    no_devices: FuseClient, share: Path, kind: int, major: int, minor: int
) -> None:
    req = fr.mknod(2, ROOT_ID, "dev", kind | 0o600, new_encode_dev(major, minor))
    assert no_devices.errno_of(req) == errno.EPERM
    assert os.listdir(share) == []


def test_devices_false_still_makes_whiteouts(no_devices: FuseClient, share: Path) -> None:
    no_devices.ok(fr.mknod(2, ROOT_ID, "wh", stat.S_IFCHR | 0o600, 0))
    (share / "a").touch()
    no_devices.ok(fr.rename2(4, ROOT_ID, "a", ROOT_ID, "b", abi.RENAME_WHITEOUT))
    for name in ("wh", "a"):
        st_ = (share / name).lstat()
        assert stat.S_ISCHR(st_.st_mode) and st_.st_rdev == 0
    no_devices.ok(fr.mknod(6, ROOT_ID, "fifo", stat.S_IFIFO | 0o600))
