"""virtiofsd's filesystem options as request bytes: --no-xattr, --xattrmap, --cache metadata,
--allow-direct-io, --killpriv-v2, --allow-mmap, --translate-uid/--translate-gid."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsd.fs import FsOptions, PassthroughFs
from fsd.fs.idmap import parse_translations
from fsd.fs.xattrmap import parse_xattrmap
from fsd.fuse import FuseServer
from fsd.fuse.abi import (
    ENTRY_OUT,
    FOPEN_CACHE_DIR,
    FOPEN_DIRECT_IO,
    FOPEN_KEEP_CACHE,
    ROOT_ID,
    InitFlag,
)
from fsd.testing import fuse_requests as fr
from fsd.testing.fuse_requests import DEFAULT_INIT_FLAGS, FuseClient


@pytest.fixture
def serve(share: Path, daemon_umask: None) -> Iterator[object]:
    made: list[PassthroughFs] = []

    def make(**options: object) -> tuple[PassthroughFs, FuseClient]:
        fs = PassthroughFs(share, FsOptions(**options))  # type: ignore[arg-type]
        made.append(fs)
        return fs, FuseClient(FuseServer(fs))

    yield make
    for fs in made:
        fs.close()


def test_no_xattr_answers_enosys(serve: object, share: Path) -> None:
    (share / "f").write_text("x")
    os.setxattr(share / "f", "user.host", b"h")
    _, c = serve(xattr=False)  # type: ignore[operator]
    c.init()
    node = c.lookup(ROOT_ID, "f").nodeid
    u = c.next_unique
    for request in (
        fr.getxattr(u(), node, "user.host", 10),
        fr.listxattr(u(), node, 100),
        fr.setxattr(u(), node, "user.new", b"v"),
        fr.removexattr(u(), node, "user.host"),
    ):
        assert c.errno_of(request) == errno.ENOSYS
    assert os.listxattr(share / "f") == ["user.host"]


def test_xattrmap_renames_and_hides(serve: object, share: Path) -> None:
    (share / "f").write_text("x")
    os.setxattr(share / "f", "user.host-only", b"h")
    xattr_map = parse_xattrmap(":map::user.virtiofs.:")
    _, c = serve(xattrmap=xattr_map)  # type: ignore[operator]
    init = c.init()
    # security.capability lives under another name: the guest must drop it itself.
    assert not init.flags & InitFlag.HANDLE_KILLPRIV_V2
    node = c.lookup(ROOT_ID, "f").nodeid
    c.ok(fr.setxattr(c.next_unique(), node, "user.guest", b"g"))
    c.ok(fr.setxattr(c.next_unique(), node, "trusted.guest", b"t"))
    assert os.getxattr(share / "f", "user.virtiofs.user.guest") == b"g"
    assert os.getxattr(share / "f", "user.virtiofs.trusted.guest") == b"t"
    listed = c.ok(fr.listxattr(c.next_unique(), node, 1000)).split(b"\0")
    assert sorted(filter(None, listed)) == [b"trusted.guest", b"user.guest"]
    assert c.ok(fr.getxattr(c.next_unique(), node, "user.guest", 10)) == b"g"
    c.ok(fr.removexattr(c.next_unique(), node, "user.guest"))
    assert "user.virtiofs.user.guest" not in os.listxattr(share / "f")


def test_xattrmap_refusals(serve: object, share: Path) -> None:
    (share / "f").write_text("x")
    os.setxattr(share / "f", "user.secret", b"s")
    xattr_map = parse_xattrmap(":bad:all:user.secret:user.secret: :ok:all:::")
    _, c = serve(xattrmap=xattr_map)  # type: ignore[operator]
    c.init()
    node = c.lookup(ROOT_ID, "f").nodeid
    assert c.errno_of(fr.getxattr(c.next_unique(), node, "user.secret", 10)) == errno.ENODATA
    assert c.errno_of(fr.setxattr(c.next_unique(), node, "user.secret", b"x")) == errno.EPERM
    assert c.errno_of(fr.removexattr(c.next_unique(), node, "user.secret")) == errno.EPERM
    assert c.ok(fr.listxattr(c.next_unique(), node, 100)) == b""
    assert os.getxattr(share / "f", "user.secret") == b"s"


def test_cache_metadata(serve: object, share: Path) -> None:
    (share / "f").write_text("x")
    _, c = serve(cache="metadata")  # type: ignore[operator]
    c.init()
    node = c.lookup(ROOT_ID, "f").nodeid
    assert fr.parse_open(c.ok(fr.open_(c.next_unique(), node)))[1] == FOPEN_DIRECT_IO
    dir_flags = fr.parse_open(c.ok(fr.opendir(c.next_unique(), ROOT_ID)))[1]
    assert dir_flags == FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE


@pytest.mark.parametrize("allow", [False, True])
def test_allow_direct_io_passes_o_direct(serve: object, share: Path, allow: bool) -> None:
    (share / "f").write_bytes(bytes(4096))
    fs, c = serve(allow_direct_io=allow)  # type: ignore[operator]
    c.init()
    node = c.lookup(ROOT_ID, "f").nodeid
    fh = c.open(node, os.O_RDONLY | os.O_DIRECT)
    host_flags = fcntl.fcntl(fs.handles.get(fh).fd, fcntl.F_GETFL)
    assert bool(host_flags & os.O_DIRECT) == allow
    created = c.ok(fr.create(c.next_unique(), ROOT_ID, "g", os.O_RDWR | os.O_CREAT | os.O_DIRECT))
    cfh = fr.parse_open(created, ENTRY_OUT.size)[0]
    assert bool(fcntl.fcntl(fs.handles.get(cfh).fd, fcntl.F_GETFL) & os.O_DIRECT) == allow


@pytest.mark.parametrize(("asked", "granted"), [(None, True), (True, True), (False, False)])
def test_killpriv_v2(serve: object, asked: bool | None, granted: bool) -> None:
    _, c = serve(killpriv_v2=asked)  # type: ignore[operator]
    assert bool(c.init().flags & InitFlag.HANDLE_KILLPRIV_V2) == granted


@pytest.mark.parametrize("readdirplus", [True, False])
def test_no_readdirplus_withholds_it_and_readdir_still_lists(
    serve: object, share: Path, readdirplus: bool
) -> None:
    (share / "f").touch()
    _, c = serve(readdirplus=readdirplus)  # type: ignore[operator]
    plus = InitFlag.DO_READDIRPLUS | InitFlag.READDIRPLUS_AUTO
    assert c.init().flags & plus == (plus if readdirplus else 0)
    fh = c.opendir(ROOT_ID)
    assert {d.name for d in c.readdir(ROOT_ID, fh)} >= {b"f"}


def test_killpriv_v2_cannot_be_forced_when_the_capability_is_renamed() -> None:
    with pytest.raises(ValueError, match="killpriv_v2"):
        FsOptions(killpriv_v2=True, rewrite_security_xattrs=True)


def test_allow_mmap(serve: object) -> None:
    offered = DEFAULT_INIT_FLAGS | InitFlag.DIRECT_IO_ALLOW_MMAP | InitFlag.INIT_EXT
    _, plain = serve()  # type: ignore[operator]
    init = plain.init(flags=offered)
    assert not (init.flags2 << 32) & InitFlag.DIRECT_IO_ALLOW_MMAP
    _, allowing = serve(cache="never", allow_mmap=True)  # type: ignore[operator]
    init = allowing.init(flags=offered)
    assert (init.flags2 << 32) & InitFlag.DIRECT_IO_ALLOW_MMAP


@pytest.mark.skipif(os.geteuid() != 0, reason="creating files as other users needs root")
def test_translate_uid_and_gid(serve: object, share: Path) -> None:
    maps = parse_translations(
        ["squash-guest:1000:4000:100", "map:0:5000:1", "forbid-guest:7:1"],
        ["map:0:5000:1", "host:6000:60:10"],
    )
    assert maps is not None
    _, c = serve(id_maps=maps)  # type: ignore[operator]
    c.init()
    as_1050 = fr.create(c.next_unique(), ROOT_ID, "squashed", uid=1050, gid=0)
    c.ok(as_1050)
    st = (share / "squashed").stat()
    assert (st.st_uid, st.st_gid) == (4000, 5000)  # guest 1050 → host 4000; gid 0 → 5000
    entry = c.lookup(ROOT_ID, "squashed")
    assert (entry.attr.uid, entry.attr.gid) == (4000, 0)  # host 4000 unmapped back: as is
    as_root = fr.mkdir(c.next_unique(), ROOT_ID, "rootdir", uid=0, gid=0)
    c.ok(as_root)
    assert os.stat(share / "rootdir").st_uid == 5000
    assert c.lookup(ROOT_ID, "rootdir").attr.uid == 0  # map: both ways
    forbidden = fr.mkdir(c.next_unique(), ROOT_ID, "forbidden", uid=7, gid=0)
    assert c.errno_of(forbidden) == errno.EOVERFLOW
    assert not (share / "forbidden").exists()
    (share / "hostfile").write_text("x")
    os.chown(share / "hostfile", 123, 6005)
    attr = c.lookup(ROOT_ID, "hostfile").attr
    assert (attr.uid, attr.gid) == (123, 65)  # host gid 6005 → guest 65; uid 123 unchanged
    assert stat.S_ISREG(attr.mode)
