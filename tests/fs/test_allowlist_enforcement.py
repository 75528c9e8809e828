"""The dynamic path allowlist as PassthroughFs enforces it, driven by real FUSE request bytes.

Each test builds the share on the host, sets the allowlist, and checks the errno (or the
listing) the guest would get: DENIED names look absent (ENOENT, never a cached negative entry),
creating or removing outside FULL places is EACCES, listings show only what leads somewhere.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsd.allowlist import Allowlist, normalize
from fsd.fs import FsOptions, PassthroughFs
from fsd.fuse import FuseServer
from fsd.fuse.abi import RENAME_NOREPLACE, ROOT_ID
from fsd.testing import fuse_requests as fr
from fsd.testing.fuse_requests import FuseClient


@pytest.fixture
def allowlist() -> Allowlist:
    return Allowlist()


@pytest.fixture
def fs(share: Path, allowlist: Allowlist) -> Iterator[PassthroughFs]:
    # A negative timeout, so that a cached negative entry would show up in the tests below.
    passthrough = PassthroughFs(share, FsOptions(negative_timeout=5), allowlist=allowlist)
    yield passthrough
    passthrough.close()


def allow(allowlist: Allowlist, *paths: str) -> None:
    allowlist.add(normalize(p) for p in paths)


def revoke(allowlist: Allowlist, *paths: str) -> None:
    allowlist.remove(normalize(p) for p in paths)


def names(client: FuseClient, nodeid: int, *, plus: bool = False, size: int = 4096) -> set[bytes]:
    return {e.name for e in client.listdir(nodeid, plus=plus, size=size)}


def err(client: FuseClient, build: object, *args: object, **kwargs: object) -> int:
    """The errno of one request built by ``fr.<build>(unique, *args)``."""
    assert callable(build)
    return client.errno_of(build(client.next_unique(), *args, **kwargs))


@pytest.fixture
def tree(share: Path) -> Path:
    """/a/b/file, /a/c/secret, /top.txt, /x/ (a directory)."""
    (share / "a" / "b").mkdir(parents=True)
    (share / "a" / "c").mkdir()
    (share / "a" / "b" / "file").write_text("allowed\n")
    (share / "a" / "c" / "secret").write_text("secret\n")
    (share / "top.txt").write_text("top\n")
    (share / "x").mkdir()
    return share


def test_empty_allowlist_hides_everything_but_the_mount_works(
    client: FuseClient, tree: Path
) -> None:
    assert client.getattr(ROOT_ID).mode & stat.S_IFDIR
    client.ok(fr.statfs(client.next_unique()))
    for name in ("a", "top.txt", "x", "missing"):
        # An error reply, not a negative entry (nodeid 0) the guest would cache for 5 s.
        reply = fr.parse_reply(client.call(fr.lookup(client.next_unique(), ROOT_ID, name)))
        assert -reply.error == errno.ENOENT, name
    assert names(client, ROOT_ID) == {b".", b".."}
    assert names(client, ROOT_ID, plus=True) == {b".", b".."}
    assert err(client, fr.mkdir, ROOT_ID, "new") == errno.EACCES
    assert err(client, fr.create, ROOT_ID, "new.txt") == errno.EACCES
    assert not (tree / "new").exists()
    assert not (tree / "new.txt").exists()


def test_absent_names_still_get_negative_entries_in_allowed_places(
    client: FuseClient, allowlist: Allowlist, tree: Path
) -> None:
    allow(allowlist, "/a/b")
    reply = fr.parse_reply(client.call(fr.lookup(client.next_unique(), ROOT_ID, "a")))
    a = fr.parse_entry(reply.payload).nodeid
    b = client.lookup(a, "b").nodeid
    missing = fr.parse_reply(client.call(fr.lookup(client.next_unique(), b, "missing")))
    assert missing.error == 0 and fr.parse_entry(missing.payload).nodeid == 0
    hidden = fr.parse_reply(client.call(fr.lookup(client.next_unique(), a, "c")))
    assert -hidden.error == errno.ENOENT


def test_traverse_ancestors_show_only_the_way_down(
    client: FuseClient, allowlist: Allowlist, tree: Path
) -> None:
    allow(allowlist, "/a/b")
    a = client.lookup(ROOT_ID, "a").nodeid
    b = client.lookup(a, "b").nodeid
    assert names(client, ROOT_ID) == {b".", b"..", b"a"}
    assert names(client, a, plus=True) == {b".", b"..", b"b"}
    assert names(client, b) == {b".", b"..", b"file"}
    assert err(client, fr.lookup, a, "c") == errno.ENOENT
    assert err(client, fr.lookup, ROOT_ID, "top.txt") == errno.ENOENT
    f = client.lookup(b, "file").nodeid
    fh = client.open(f)
    assert client.read(f, fh, 0, 100) == b"allowed\n"
    # '.' and '..' resolve inside what is visible.
    assert client.lookup(b, "..").nodeid == a
    assert client.lookup(a, ".").nodeid == a


def test_create_and_remove_need_a_full_place(
    client: FuseClient, allowlist: Allowlist, tree: Path
) -> None:
    allow(allowlist, "/a/b", "/a/new")
    a = client.lookup(ROOT_ID, "a").nodeid
    b = client.lookup(a, "b").nodeid
    f = client.lookup(b, "file").nodeid
    denied = [
        (fr.mkdir, (a, "d")),
        (fr.mkdir, (ROOT_ID, "d")),
        (fr.create, (a, "f.txt")),
        (fr.mknod, (a, "fifo", stat.S_IFIFO | 0o644)),
        (fr.symlink, (a, "ln", "b/file")),
        (fr.link, (f, a, "hard")),
        (fr.unlink, (ROOT_ID, "top.txt")),
        (fr.rmdir, (ROOT_ID, "x")),
        (fr.rmdir, (a, "c")),
        (fr.rename, (b, "file", a, "moved")),
        (fr.rename, (a, "c", b, "c")),
        (fr.rename2, (b, "file", a, "moved", RENAME_NOREPLACE)),
    ]
    for build, args in denied:
        assert err(client, build, *args) == errno.EACCES, (build.__name__, args)
    assert sorted(os.listdir(tree)) == ["a", "top.txt", "x"]
    assert sorted(os.listdir(tree / "a")) == ["b", "c"]
    assert os.listdir(tree / "a" / "b") == ["file"]

    # Inside the FULL subtree everything works, and the added entry itself may be created,
    # renamed and removed although its parent is only TRAVERSE.
    sub = client.mkdir(b, "sub").nodeid
    client.create(sub, "f.txt")
    client.ok(fr.symlink(client.next_unique(), b, "ln", "file"))
    client.ok(fr.link(client.next_unique(), f, b, "hard"))
    client.ok(fr.mknod(client.next_unique(), b, "fifo", stat.S_IFIFO | 0o644))
    client.ok(fr.rename(client.next_unique(), b, "hard", sub, "hard2"))
    client.ok(fr.unlink(client.next_unique(), sub, "hard2"))
    new = client.mkdir(a, "new").nodeid
    client.create(new, "inside.txt")
    client.ok(fr.unlink(client.next_unique(), new, "inside.txt"))
    client.ok(fr.rmdir(client.next_unique(), a, "new"))
    assert sorted(os.listdir(tree / "a" / "b")) == ["fifo", "file", "ln", "sub"]


def test_traverse_directories_cannot_be_changed(
    client: FuseClient, allowlist: Allowlist, tree: Path
) -> None:
    allow(allowlist, "/a/b")
    a = client.lookup(ROOT_ID, "a").nodeid
    b = client.lookup(a, "b").nodeid
    before = (tree / "a").stat().st_mode
    assert err(client, fr.setattr, a, mode=0o777) == errno.EACCES
    assert err(client, fr.setattr, ROOT_ID, mode=0o777) == errno.EACCES
    assert (tree / "a").stat().st_mode == before
    client.ok(fr.setattr(client.next_unique(), b, mode=0o750))
    assert stat.S_IMODE((tree / "a" / "b").stat().st_mode) == 0o750


def test_readdir_skips_many_hidden_entries(
    client: FuseClient, allowlist: Allowlist, share: Path
) -> None:
    # Far more hidden entries than fit one 4 KiB READDIR batch, around the visible ones.
    for i in range(1500):
        (share / f"hidden-entry-with-a-long-name-{i:05d}").touch()
    (share / "m-visible").mkdir()
    (share / "zzz-visible").touch()
    allow(allowlist, "/m-visible", "/zzz-visible", "/never-created")
    for plus in (False, True):
        fh = client.opendir(ROOT_ID)
        batches = []
        offset = 0
        while True:
            batch = (client.readdirplus if plus else client.readdir)(ROOT_ID, fh, offset, 4096)
            if not batch:
                break
            batches.append(batch)
            offset = batch[-1].off
        client.ok(fr.releasedir(client.next_unique(), ROOT_ID, fh))
        listed = [e.name for batch in batches for e in batch]
        assert sorted(listed) == [b".", b"..", b"m-visible", b"zzz-visible"]
        assert len(batches) == 1


def test_paths_follow_renames(client: FuseClient, allowlist: Allowlist, share: Path) -> None:
    (share / "x").mkdir()
    (share / "y").mkdir()
    allow(allowlist, "/x", "/y")
    x = client.lookup(ROOT_ID, "x").nodeid
    y = client.lookup(ROOT_ID, "y").nodeid
    d = client.mkdir(x, "d").nodeid
    inner = client.mkdir(d, "inner").nodeid
    client.ok(fr.rename(client.next_unique(), x, "d", y, "d"))
    # d now lives under /y: revoking /x leaves it writable, revoking /y does not.
    revoke(allowlist, "/x")
    client.create(inner, "one.txt")
    revoke(allowlist, "/y")
    allow(allowlist, "/x")
    assert err(client, fr.create, inner, "two.txt") == errno.EACCES
    assert err(client, fr.mkdir, d, "sub") == errno.EACCES
    assert os.listdir(share / "y" / "d" / "inner") == ["one.txt"]


def test_revocation_keeps_held_handles(
    client: FuseClient, allowlist: Allowlist, share: Path
) -> None:
    (share / "p").mkdir()
    (share / "p" / "f").write_text("data\n")
    allow(allowlist, "/p")
    p = client.lookup(ROOT_ID, "p").nodeid
    f = client.lookup(p, "f").nodeid
    fh = client.open(f, os.O_RDWR)
    revoke(allowlist, "/p")
    # New lookups fail at once; held handles and inodes keep working (as in crosvm).
    assert err(client, fr.lookup, ROOT_ID, "p") == errno.ENOENT
    assert err(client, fr.lookup, p, "f") == errno.ENOENT
    assert names(client, p) == {b".", b".."}
    assert err(client, fr.create, p, "new") == errno.EACCES
    assert client.read(f, fh, 0, 100) == b"data\n"
    assert client.write(f, fh, 0, b"DATA") == 4
    assert client.getattr(f).size == 5
    # Adding it back makes it visible again at once (no negative entry was cached).
    allow(allowlist, "/p")
    assert client.lookup(ROOT_ID, "p").nodeid == p


def test_non_utf8_names(client: FuseClient, allowlist: Allowlist, share: Path) -> None:
    (share / "ok").mkdir()
    os.mkdir(os.path.join(os.fsencode(share), b"\xff-bad"))
    os.mkdir(os.path.join(os.fsencode(share / "ok"), b"\xfe-inside"))
    allow(allowlist, "/ok")
    assert err(client, fr.lookup, ROOT_ID, b"\xff-bad") == errno.ENOENT
    assert names(client, ROOT_ID) == {b".", b"..", b"ok"}
    ok = client.lookup(ROOT_ID, "ok").nodeid
    inside = client.lookup(ok, b"\xfe-inside").nodeid
    client.create(inside, b"\xfd.txt")
    assert names(client, ok) == {b".", b"..", b"\xfe-inside"}


def test_without_an_allowlist_everything_is_reachable(share: Path) -> None:
    (share / "f").write_text("x")
    fs = PassthroughFs(share)
    try:
        assert not fs.allowlist.enabled
        client = FuseClient(FuseServer(fs))
        client.init()
        assert names(client, ROOT_ID) == {b".", b"..", b"f"}
        client.mkdir(ROOT_ID, "d")
        client.ok(fr.setattr(client.next_unique(), ROOT_ID, mode=0o755))
    finally:
        fs.close()
