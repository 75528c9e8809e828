"""Findings of the fs security review, each as request bytes against a real share.

* CREATE of an existing name is an OPEN the guest kernel never checked: the host checks it
  as the caller, and the reply carries the attributes after O_TRUNC.
* Under ``--uid-map``/``--gid-map`` guest root need not be host root: every permission-relevant
  op runs as the caller's host ids, so the host confines it.
* An fh must belong to the request's nodeid (what plugins and the allowlist judge).
* Renaming a directory the table does not hold still moves the paths of what it holds below.
* An empty allowlist leaves no part of the share root changeable.
* READDIR stops listing names revoked in the middle of a listing.
* POSIX lock descriptions never get more access than the guest's handles.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import select
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import fsd.testing.fuse_requests as fr
from fsd.allowlist.trie import Allowlist
from fsd.fs import FsOptions, PassthroughFs
from fsd.fs.credentials import Credentials
from fsd.fs.idmap import parse_id_maps
from fsd.fuse import FuseServer
from fsd.fuse.abi import ROOT_ID
from fsd.testing.fuse_requests import FuseClient

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="switching credentials needs root")


def _client(share: Path, options: FsOptions | None = None, **kw: object) -> FuseClient:
    c = FuseClient(FuseServer(PassthroughFs(share, options or FsOptions(), **kw)))  # type: ignore[arg-type]
    c.init()
    return c


def _root_secret(share: Path, name: str = "secret") -> Path:
    path = share / name
    path.write_bytes(b"ROOT ONLY")
    os.chown(path, 0, 0)
    os.chmod(path, 0o600)
    return path


# --- 1: CREATE of an existing name -----------------------------------------------------------


@root_only
@pytest.mark.parametrize("extra", [0, os.O_TRUNC])
def test_create_of_an_existing_file_is_checked_as_the_caller(
    client: FuseClient, share: Path, extra: int
) -> None:
    os.chmod(share, 0o1777)
    secret = _root_secret(share)
    request = fr.create(
        client.next_unique(), ROOT_ID, "secret", os.O_RDWR | os.O_CREAT | extra, uid=1000, gid=1000
    )
    assert client.errno_of(request) == errno.EACCES
    assert secret.read_bytes() == b"ROOT ONLY"
    assert Credentials.current() == (0, 0)
    # The caller's own file opens as before.
    os.chown(secret, 1000, 1000)
    raw = client.call(fr.create(client.next_unique(), ROOT_ID, "secret", os.O_RDWR | extra,
                                uid=1000, gid=1000))  # fmt: skip
    reply = fr.parse_reply(raw)
    assert reply.error == 0
    assert fr.parse_entry(reply.payload).attr.size == (0 if extra else 9)


def test_create_of_an_existing_special_file_is_refused(client: FuseClient, share: Path) -> None:
    os.mkfifo(share / "fifo")
    request = fr.create(client.next_unique(), ROOT_ID, "fifo", os.O_RDWR | os.O_CREAT)
    assert client.errno_of(request) == errno.EACCES
    (share / "dir").mkdir()
    request = fr.create(client.next_unique(), ROOT_ID, "dir", os.O_RDWR | os.O_CREAT)
    assert client.errno_of(request) == errno.EISDIR


# --- 2: id maps confine guest root -----------------------------------------------------------


@pytest.fixture
def mapped(share: Path) -> Iterator[FuseClient]:
    """Guest root is host 1000; the share and its files belong to host root."""
    os.chmod(share, 0o755)
    fs = PassthroughFs(share, FsOptions(id_maps=parse_id_maps("0 1000 1", "0 1000 1")))
    c = FuseClient(FuseServer(fs))
    c.init()
    yield c
    fs.close()


@root_only
def test_mapped_guest_root_is_checked_as_its_host_user(mapped: FuseClient, share: Path) -> None:
    c = mapped
    secret = _root_secret(share)
    (share / "dir").mkdir()
    (share / "private").mkdir(mode=0o700)
    (share / "private" / "f").write_bytes(b"inside")
    os.chmod(share / "private" / "f", 0o644)
    entry = c.lookup(ROOT_ID, "secret")
    node = entry.nodeid
    u = c.next_unique
    assert c.errno_of(fr.open_(u(), node, os.O_RDWR)) == errno.EACCES
    assert c.errno_of(fr.open_(u(), node, os.O_RDONLY)) == errno.EACCES
    assert c.errno_of(fr.create(u(), ROOT_ID, "secret", os.O_RDWR | os.O_TRUNC)) == errno.EACCES
    assert c.errno_of(fr.setattr(u(), node, mode=0o4777)) == errno.EPERM
    assert c.errno_of(fr.setattr(u(), node, size=0)) == errno.EACCES
    assert c.errno_of(fr.setattr(u(), node, uid=0)) == errno.EPERM
    assert c.errno_of(fr.setattr(u(), node, mtime_ns=0)) == errno.EPERM
    assert c.errno_of(fr.setxattr(u(), node, "user.x", b"1")) == errno.EACCES
    assert c.errno_of(fr.setxattr(u(), node, "trusted.x", b"1")) == errno.EPERM
    assert c.errno_of(fr.setxattr(u(), node, "security.capability", b"1")) == errno.EPERM
    assert c.errno_of(fr.removexattr(u(), node, "trusted.x")) == errno.EPERM
    assert c.errno_of(fr.unlink(u(), ROOT_ID, "secret")) == errno.EACCES
    assert c.errno_of(fr.rmdir(u(), ROOT_ID, "dir")) == errno.EACCES
    assert c.errno_of(fr.rename(u(), ROOT_ID, "secret", ROOT_ID, "moved")) == errno.EACCES
    assert c.errno_of(fr.link(u(), node, ROOT_ID, "hard")) in (errno.EACCES, errno.EPERM)
    private = c.lookup(ROOT_ID, "private")
    assert c.errno_of(fr.lookup(u(), private.nodeid, "f")) == errno.EACCES
    assert c.errno_of(fr.opendir(u(), private.nodeid)) == errno.EACCES
    st = os.stat(secret)
    assert (oct(st.st_mode), st.st_uid, secret.read_bytes()) == (oct(0o100600), 0, b"ROOT ONLY")
    assert os.listxattr(secret) == []
    assert sorted(os.listdir(share)) == ["dir", "private", "secret"]
    assert Credentials.current() == (0, 0)


@root_only
def test_mapped_guest_root_still_owns_its_host_users_files(mapped: FuseClient, share: Path) -> None:
    c = mapped
    os.chown(share, 1000, 1000)
    mine = share / "mine"
    mine.write_bytes(b"x")
    os.chown(mine, 1000, 1000)
    os.chmod(mine, 0o600)
    node = c.lookup(ROOT_ID, "mine").nodeid
    c.ok(fr.release(c.next_unique(), node, c.open(node, os.O_RDWR)))
    assert c.errno_of(fr.setattr(c.next_unique(), node, mode=0o640)) == 0
    assert c.errno_of(fr.setxattr(c.next_unique(), node, "user.x", b"1")) == 0
    assert c.errno_of(fr.rename(c.next_unique(), ROOT_ID, "mine", ROOT_ID, "renamed")) == 0
    assert c.errno_of(fr.unlink(c.next_unique(), ROOT_ID, "renamed")) == 0
    assert os.listdir(share) == []


# --- 3: a handle acts only for its own inode -------------------------------------------------


def test_an_fh_of_another_inode_is_ebadf(client: FuseClient, share: Path) -> None:
    (share / "a").write_bytes(b"aaaa")
    (share / "b").write_bytes(b"bbbb")
    a = client.lookup(ROOT_ID, "a").nodeid
    b = client.lookup(ROOT_ID, "b").nodeid
    fh = client.open(a, os.O_RDWR)
    dfh = client.opendir(ROOT_ID)
    u = client.next_unique
    wrong: list[bytes] = [
        fr.setattr(u(), b, mode=0o777, fh=fh),
        fr.setattr(u(), b, size=0, fh=fh),
        fr.setattr(u(), a, mode=0o777, fh=dfh),
        fr.read(u(), b, fh, 0, 4),
        fr.write(u(), b, fh, 0, b"x"),
        fr.flush(u(), b, fh),
        fr.fsync(u(), b, fh),
        fr.fallocate(u(), b, fh, 0, 10),
        fr.lseek(u(), b, fh, 0, os.SEEK_DATA),
        fr.copy_file_range(u(), b, fh, 0, a, fh, 0, 1),
        fr.copy_file_range(u(), a, fh, 0, b, fh, 0, 1),
        fr.getlk(u(), b, fh, 1, fcntl.F_RDLCK),
        fr.setlk(u(), b, fh, 1, fcntl.F_RDLCK),
        fr.setlkw(u(), b, fh, 1, fcntl.F_RDLCK),
        fr.readdir(u(), a, dfh),
        fr.readdirplus(u(), a, dfh),
        fr.fsyncdir(u(), a, dfh),
        fr.releasedir(u(), a, dfh),
        fr.release(u(), b, fh),
    ]
    for request in wrong:
        assert client.errno_of(request) == errno.EBADF
    assert (share / "b").read_bytes() == b"bbbb"
    assert (share / "a").read_bytes() == b"aaaa"
    assert os.stat(share / "a").st_mode & 0o777 != 0o777
    # The right pairs still work.
    assert client.read(a, fh, 0, 4) == b"aaaa"
    client.ok(fr.releasedir(u(), ROOT_ID, dfh))
    client.ok(fr.release(u(), a, fh))


# --- 4: paths below a renamed directory the table forgot --------------------------------------


def test_rename_of_a_forgotten_directory_moves_its_known_children(share: Path) -> None:
    for sub in ("a", "b", "a/d", "a/d/x"):
        (share / sub).mkdir()
    (share / "a/d/x/secret").write_bytes(b"s")
    allowlist = Allowlist()
    allowlist.add([("a",), ("b",)])
    c = _client(share, allowlist=allowlist)
    a, b = c.lookup(ROOT_ID, "a").nodeid, c.lookup(ROOT_ID, "b").nodeid
    d = c.lookup(a, "d").nodeid
    x = c.lookup(d, "x").nodeid
    c.call(fr.forget(c.next_unique(), d, 1))
    c.ok(fr.rename(c.next_unique(), a, "d", b, "d"))
    allowlist.remove([("b",)])
    assert c.errno_of(fr.lookup(c.next_unique(), x, "secret")) == errno.ENOENT
    assert c.errno_of(fr.create(c.next_unique(), x, "new")) == errno.EACCES
    assert os.listdir(share / "b/d/x") == ["secret"]


def test_a_directory_found_at_a_new_path_takes_its_children_along(share: Path) -> None:
    for sub in ("a", "b", "a/d", "a/d/x"):
        (share / sub).mkdir()
    allowlist = Allowlist()
    allowlist.add([("a",), ("b",)])
    c = _client(share, allowlist=allowlist)
    a = c.lookup(ROOT_ID, "a").nodeid
    d = c.lookup(a, "d").nodeid
    x = c.lookup(d, "x").nodeid
    os.rename(share / "a/d", share / "b/d")  # behind fsd's back
    b = c.lookup(ROOT_ID, "b").nodeid
    assert c.lookup(b, "d").nodeid == d  # found again: the path changes, and x's with it
    allowlist.remove([("b",)])
    assert c.errno_of(fr.mkdir(c.next_unique(), x, "new")) == errno.EACCES


def test_exchange_swaps_the_paths_below_both(share: Path) -> None:
    for sub in ("a", "b", "a/x", "b/y"):
        (share / sub).mkdir()
    allowlist = Allowlist()
    allowlist.add([("a",), ("b",)])
    c = _client(share, allowlist=allowlist)
    a, b = c.lookup(ROOT_ID, "a").nodeid, c.lookup(ROOT_ID, "b").nodeid
    x, y = c.lookup(a, "x").nodeid, c.lookup(b, "y").nodeid
    c.call(fr.forget(c.next_unique(), a, 1))
    c.call(fr.forget(c.next_unique(), b, 1))
    c.ok(fr.rename2(c.next_unique(), ROOT_ID, "a", ROOT_ID, "b", 2))  # RENAME_EXCHANGE
    allowlist.remove([("a",)])  # now holds y
    assert c.errno_of(fr.mkdir(c.next_unique(), y, "n")) == errno.EACCES
    c.ok(fr.mkdir(c.next_unique(), x, "n"))
    assert os.listdir(share / "b/x") == ["n"]


# --- 5: an empty allowlist ---------------------------------------------------------------------


def test_an_empty_allowlist_leaves_the_root_unchangeable(share: Path) -> None:
    os.chmod(share, 0o755)
    allowlist = Allowlist()
    c = _client(share, allowlist=allowlist)
    u = c.next_unique
    assert c.errno_of(fr.setattr(u(), ROOT_ID, mode=0o777)) == errno.EACCES
    assert c.errno_of(fr.setattr(u(), ROOT_ID, mtime_ns=0)) == errno.EACCES
    assert c.errno_of(fr.setxattr(u(), ROOT_ID, "user.x", b"1")) == errno.EACCES
    assert c.errno_of(fr.removexattr(u(), ROOT_ID, "user.x")) == errno.EACCES
    assert os.stat(share).st_mode & 0o777 == 0o755
    assert os.listxattr(share) == []
    allowlist.add([()])
    assert c.errno_of(fr.setattr(u(), ROOT_ID, mode=0o750)) == 0


# --- 6: READDIR after a revoke -----------------------------------------------------------------


@pytest.mark.parametrize("plus", [False, True])
def test_readdir_stops_listing_revoked_names(share: Path, plus: bool) -> None:
    for name in ("a", "b", "c"):
        (share / name).mkdir()
    allowlist = Allowlist()
    allowlist.add([("a",), ("b",), ("c",)])
    c = _client(share, allowlist=allowlist)
    fh = c.opendir(ROOT_ID)
    listing = c.readdirplus if plus else c.readdir
    first = listing(ROOT_ID, fh, 0, 400 if plus else 60)
    seen = [d.name for d in first]
    assert 0 < len(seen) < 5
    allowlist.remove([("a",), ("b",), ("c",)])
    rest = listing(ROOT_ID, fh, first[-1].off, 8192)
    assert [d.name for d in rest if d.name not in (b".", b"..")] == []


# --- 7: lock descriptions ----------------------------------------------------------------------

_IN_CLOSE_WRITE = 0x8
_libc = ctypes.CDLL(None, use_errno=True)


def _close_writes(path: Path, action: Callable[[], None]) -> int:
    """How many IN_CLOSE_WRITE events ``path`` gets while ``action`` runs."""
    fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    assert fd >= 0
    try:
        assert _libc.inotify_add_watch(fd, os.fsencode(path), _IN_CLOSE_WRITE) >= 0
        action()
        select.select([fd], [], [], 0.05)
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return 0
        count, offset = 0, 0
        while offset < len(data):
            _wd, mask, _cookie, length = struct.unpack_from("iIII", data, offset)
            count += bool(mask & _IN_CLOSE_WRITE)
            offset += 16 + length
        return count
    finally:
        os.close(fd)


def test_a_read_lock_opens_nothing_for_writing(client: FuseClient, share: Path) -> None:
    (share / "f").write_bytes(b"x" * 100)
    node = client.lookup(ROOT_ID, "f").nodeid

    def lock_and_release() -> None:
        fh = client.open(node, os.O_RDONLY)
        client.ok(fr.setlk(client.next_unique(), node, fh, 7, fcntl.F_RDLCK))
        client.ok(fr.flush(client.next_unique(), node, fh, 7))
        client.ok(fr.release(client.next_unique(), node, fh))

    assert _close_writes(share / "f", lock_and_release) == 0
    # A write lock through a read-only handle is refused, as fcntl(2) on it would be.
    fh = client.open(node, os.O_RDONLY)
    assert (
        client.errno_of(fr.setlk(client.next_unique(), node, fh, 7, fcntl.F_WRLCK)) == errno.EBADF
    )


def test_an_owner_upgrades_through_a_writable_handle(client: FuseClient, share: Path) -> None:
    (share / "f").write_bytes(b"x" * 100)
    node = client.lookup(ROOT_ID, "f").nodeid
    ro = client.open(node, os.O_RDONLY)
    rw = client.open(node, os.O_RDWR)
    client.ok(fr.setlk(client.next_unique(), node, ro, 7, fcntl.F_RDLCK, 0, 9))
    client.ok(fr.setlk(client.next_unique(), node, rw, 7, fcntl.F_WRLCK, 50, 59))
    with open(share / "f", "r+b") as host:
        probe = struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 10, 0)
        got = struct.unpack("hhqqi4x", fcntl.fcntl(host, 36, probe))  # F_OFD_GETLK
        assert got[0] == fcntl.F_RDLCK  # the read lock moved along
        probe = struct.pack("hhqqi4x", fcntl.F_RDLCK, 0, 50, 10, 0)
        got = struct.unpack("hhqqi4x", fcntl.fcntl(host, 36, probe))
        assert got[0] == fcntl.F_WRLCK
    # The other owner conflicts with both.
    other = client.errno_of(fr.setlk(client.next_unique(), node, rw, 8, fcntl.F_WRLCK, 0, 0))
    assert other == errno.EAGAIN
