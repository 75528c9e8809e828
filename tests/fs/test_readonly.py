"""``--readonly`` as request bytes: every request that would change the share answers EROFS
and leaves the host directory exactly as it was; reading works as before."""

from __future__ import annotations

import errno
import inspect
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsd.fs import FsOptions, PassthroughFs
from fsd.fs.readonly import ALLOWED, REFUSED, ReadOnlyPassthroughFs
from fsd.fuse import FuseServer
from fsd.fuse.abi import CREATE_IN, ENTRY_OUT, ROOT_ID, Opcode
from fsd.fuse.filesystem import Filesystem
from fsd.testing import fuse_requests as fr
from fsd.testing.fuse_requests import FuseClient


def _snapshot(root: Path) -> dict[str, tuple[int, int, int, bytes, dict[str, bytes]]]:
    """Every path below ``root`` with its mode, size, mtime, content and xattrs."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
        xattrs = {}
        if not path.is_symlink():
            xattrs = {n: os.getxattr(path, n) for n in os.listxattr(path)}
        out[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, data, xattrs)
    return out


@pytest.fixture
def tree(share: Path) -> Path:
    (share / "dir").mkdir()
    (share / "dir" / "inner").write_text("inner")
    (share / "file").write_text("content")
    os.setxattr(share / "file", "user.k", b"v")
    (share / "link").symlink_to("file")
    (share / "setuid").write_text("x")
    os.chmod(share / "setuid", 0o4755)
    return share


@pytest.fixture
def ro(tree: Path, daemon_umask: None) -> Iterator[FuseClient]:
    fs = PassthroughFs(tree, FsOptions(readonly=True))
    assert isinstance(fs, ReadOnlyPassthroughFs)
    client = FuseClient(FuseServer(fs))
    client.init()
    yield client
    fs.close()


def test_every_operation_is_classified() -> None:
    """A new Filesystem operation must be put on one side: refused or allowed."""
    ops = {
        name
        for name, member in inspect.getmembers(Filesystem, inspect.isfunction)
        if not name.startswith("_")
    }
    assert ops == ALLOWED | REFUSED
    assert not ALLOWED & REFUSED
    for name in REFUSED:
        assert getattr(ReadOnlyPassthroughFs, name) is not getattr(PassthroughFs, name), name


def test_changes_answer_erofs_and_leave_the_host_untouched(ro: FuseClient, tree: Path) -> None:
    before = _snapshot(tree)
    c = ro
    u = c.next_unique
    file = c.lookup(ROOT_ID, "file").nodeid
    d = c.lookup(ROOT_ID, "dir").nodeid
    setuid = c.lookup(ROOT_ID, "setuid").nodeid
    fh = c.open(file)  # read-only opens work
    refused = {
        "mkdir": fr.mkdir(u(), ROOT_ID, "new"),
        "mknod fifo": fr.mknod(u(), ROOT_ID, "fifo", stat.S_IFIFO | 0o644),
        "mknod file": fr.mknod(u(), ROOT_ID, "reg", stat.S_IFREG | 0o644),
        "symlink": fr.symlink(u(), ROOT_ID, "sl", "file"),
        "link": fr.link(u(), file, ROOT_ID, "hard"),
        "unlink": fr.unlink(u(), ROOT_ID, "file"),
        "unlink a missing name": fr.unlink(u(), ROOT_ID, "missing"),
        "rmdir": fr.rmdir(u(), ROOT_ID, "dir"),
        "rename": fr.rename(u(), ROOT_ID, "file", d, "moved"),
        "rename2": fr.rename2(u(), ROOT_ID, "file", ROOT_ID, "link", 2),
        "chmod": fr.setattr(u(), file, mode=0o600),
        "chown": fr.setattr(u(), file, uid=1, gid=1),
        "truncate": fr.setattr(u(), file, size=0),
        "truncate through the handle": fr.setattr(u(), file, size=0, fh=fh),
        "utimes": fr.setattr(u(), file, atime_ns=1, mtime_ns=1),
        "touch": fr.setattr(u(), file, atime_now=True, mtime_now=True),
        "setxattr": fr.setxattr(u(), file, "user.new", b"x"),
        "setxattr replace": fr.setxattr(u(), file, "user.k", b"changed"),
        "removexattr": fr.removexattr(u(), file, "user.k"),
        "open for writing": fr.open_(u(), file, os.O_WRONLY),
        "open for reading and writing": fr.open_(u(), file, os.O_RDWR),
        "open with O_TRUNC": fr.open_(u(), file, os.O_RDONLY | os.O_TRUNC),
        "open for appending": fr.open_(u(), file, os.O_WRONLY | os.O_APPEND),
        "open a set-uid file for writing": fr.open_(u(), setuid, os.O_RDWR),
        "create": fr.create(u(), ROOT_ID, "created", os.O_WRONLY | os.O_CREAT),
        "create read-only": fr.create(u(), ROOT_ID, "created", os.O_RDONLY | os.O_CREAT),
        "create an existing file for writing": fr.create(u(), ROOT_ID, "file", os.O_RDWR),
        "create an existing file with O_TRUNC": fr.create(
            u(), ROOT_ID, "file", os.O_RDONLY | os.O_CREAT | os.O_TRUNC
        ),
        "tmpfile": fr.request(
            Opcode.TMPFILE, u(), ROOT_ID, CREATE_IN.pack(os.O_RDWR, 0o100600, 0, 0)
        ),
        "write": fr.write(u(), file, fh, 0, b"new"),
        "fallocate": fr.fallocate(u(), file, fh, 0, 4096),
        "copy_file_range": fr.copy_file_range(u(), file, fh, 0, file, fh, 4, 3),
        "access W_OK": fr.access(u(), file, os.W_OK),
    }
    for what, request in refused.items():
        assert c.errno_of(request) == errno.EROFS, what
    assert _snapshot(tree) == before


def test_reading_works_as_before(ro: FuseClient, tree: Path) -> None:
    c = ro
    file = c.lookup(ROOT_ID, "file")
    assert file.attr.size == len("content")
    fh = c.open(file.nodeid)
    assert c.read(file.nodeid, fh, 0, 100) == b"content"
    assert c.ok(fr.getxattr(c.next_unique(), file.nodeid, "user.k", 10)) == b"v"
    assert c.ok(fr.readlink(c.next_unique(), c.lookup(ROOT_ID, "link").nodeid)) == b"file"
    names = {e.name for e in c.listdir(ROOT_ID, plus=True)}
    assert {b"dir", b"file", b"link"} <= names
    c.ok(fr.fsync(c.next_unique(), file.nodeid, fh))
    c.ok(fr.syncfs(c.next_unique()))
    c.ok(fr.access(c.next_unique(), file.nodeid, os.R_OK))
    c.ok(fr.release(c.next_unique(), file.nodeid, fh))


def test_create_of_an_existing_name_opens_it_read_only(ro: FuseClient) -> None:
    payload = ro.ok(fr.create(ro.next_unique(), ROOT_ID, "file", os.O_RDONLY | os.O_CREAT))
    entry = fr.parse_entry(payload)
    fh = fr.parse_open(payload, ENTRY_OUT.size)[0]
    assert ro.read(entry.nodeid, fh, 0, 100) == b"content"
    exclusive = fr.create(ro.next_unique(), ROOT_ID, "file", os.O_RDONLY | os.O_CREAT | os.O_EXCL)
    assert ro.errno_of(exclusive) == errno.EEXIST


def test_a_name_the_allowlist_hides_cannot_be_created_either(tree: Path) -> None:
    from fsd.allowlist import Allowlist

    allowlist = Allowlist()
    allowlist.add([("dir",)])
    fs = PassthroughFs(tree, FsOptions(readonly=True), allowlist=allowlist)
    try:
        c = FuseClient(FuseServer(fs))
        c.init()
        hidden = fr.create(c.next_unique(), ROOT_ID, "file", os.O_RDONLY | os.O_CREAT)
        assert c.errno_of(hidden) == errno.EROFS
    finally:
        fs.close()


def test_readonly_is_a_property_of_every_passthrough(tree: Path) -> None:
    """Whoever builds the filesystem (fsd serve, fsd mount, a plugin's test) gets it."""
    fs = PassthroughFs(tree, options=FsOptions(readonly=True))
    try:
        assert isinstance(fs, ReadOnlyPassthroughFs)
    finally:
        fs.close()
    plain = PassthroughFs(tree, FsOptions())
    try:
        assert type(plain) is PassthroughFs
    finally:
        plain.close()
