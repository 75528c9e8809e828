"""POSIX ACLs (``--posix-acl``, crosvm's ``posix_acl``) as request bytes, against the host's ACLs.

The requests that create files are served on a thread of their own, as in the daemon: the
caller's umask becomes that thread's (``unshare(CLONE_FS)``), never the test process's.
A real guest kernel enforcing the ACLs is in tests/guest/test_posix_acl.py.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest

from fsd.fs import FsOptions, PassthroughFs, parse_cfg
from fsd.fs.idmap import parse_id_maps, parse_translations
from fsd.fs.xattrs import ACL_ACCESS, ACL_DEFAULT
from fsd.fuse import FuseServer
from fsd.fuse.abi import ROOT_ID, SETXATTR_ACL_KILL_SGID, InitFlag
from fsd.testing import fuse_requests as fr
from fsd.testing.fuse_requests import FuseClient
from fsd.testing.posix_acl import one_user_acl

T = TypeVar("T")
_ACL_FLAGS = InitFlag.POSIX_ACL | InitFlag.DONT_MASK | InitFlag.SETXATTR_EXT


def user_rw_acl(uid: int) -> bytes:
    """user::rw-, user:UID:rw-, group::r--, mask::rw-, other::r--."""
    return one_user_acl(6, 6, 4, 6, 4, uid)


@pytest.fixture
def serving_thread() -> Iterator[Callable[[Callable[[], T]], T]]:
    """Run a call on one thread of its own, as a queue's worker serves requests."""
    with ThreadPoolExecutor(1) as pool:

        def run(call: Callable[[], T]) -> T:
            return pool.submit(call).result()

        yield run


@pytest.fixture
def acl_client(share: Path, daemon_umask: None) -> Iterator[FuseClient]:
    """A client of a filesystem with POSIX ACLs on, INIT'ed by a kernel offering all flags."""
    fs = PassthroughFs(share, FsOptions(posix_acl=True))
    client = FuseClient(FuseServer(fs))
    client.init()
    yield client
    fs.close()


def _granted(options: FsOptions, share: Path) -> int:
    fs = PassthroughFs(share, options)
    try:
        return FuseClient(FuseServer(fs)).init().flags
    finally:
        fs.close()


def test_init_grants_acls_umask_and_setxattr_ext_only_when_asked(
    share: Path, daemon_umask: None
) -> None:
    assert _granted(FsOptions(posix_acl=True), share) & _ACL_FLAGS == _ACL_FLAGS
    assert _granted(FsOptions(), share) & _ACL_FLAGS == 0


def test_cfg_key_and_its_conflicts() -> None:
    assert parse_cfg("posix_acl=true").posix_acl
    assert not parse_cfg("posix_acl=false").posix_acl
    with pytest.raises(ValueError, match="needs xattrs"):
        FsOptions(posix_acl=True, xattr=False)


def test_acl_names_are_refused_while_acls_are_off(client: FuseClient, share: Path) -> None:
    """A 6.1 guest without FUSE_POSIX_ACL passes these names through as plain xattrs, and
    checks no permission for them: as the daemon, SETXATTR would change any file's mode."""
    victim = share / "victim"
    victim.touch(0o600)
    node = client.lookup(ROOT_ID, "victim").nodeid
    blob = user_rw_acl(1000)
    setting = fr.setxattr(2, node, ACL_ACCESS, blob)
    assert client.errno_of(setting) == errno.EOPNOTSUPP
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert client.errno_of(fr.setxattr(3, node, ACL_DEFAULT, blob)) == errno.EOPNOTSUPP
    os.setxattr(victim, ACL_ACCESS, blob)  # an ACL the host set
    os.setxattr(victim, "user.seen", b"1")
    assert client.errno_of(fr.getxattr(4, node, ACL_ACCESS, 0)) == errno.EOPNOTSUPP
    assert client.errno_of(fr.removexattr(5, node, ACL_ACCESS)) == errno.EOPNOTSUPP
    assert client.ok(fr.listxattr(6, node, 1000)) == b"user.seen\0"
    assert os.getxattr(victim, ACL_ACCESS) == blob


def test_acls_reach_the_host_when_on(acl_client: FuseClient, share: Path) -> None:
    (share / "f").touch(0o600)
    node = acl_client.lookup(ROOT_ID, "f").nodeid
    blob = user_rw_acl(1000)
    acl_client.ok(fr.setxattr_ext(2, node, ACL_ACCESS, blob))
    assert os.getxattr(share / "f", ACL_ACCESS) == blob
    assert stat.S_IMODE((share / "f").stat().st_mode) == 0o664  # the mask is the group's bits
    assert acl_client.ok(fr.getxattr(3, node, ACL_ACCESS, 1000)) == blob
    assert ACL_ACCESS + b"\0" in acl_client.ok(fr.listxattr(4, node, 1000))
    acl_client.ok(fr.removexattr(5, node, ACL_ACCESS))
    assert ACL_ACCESS.decode() not in os.listxattr(share / "f")


def test_the_callers_umask_applies_without_a_default_acl(
    acl_client: FuseClient, share: Path, serving_thread: Callable[[Callable[[], bytes]], bytes]
) -> None:
    unique = iter(range(10, 100))
    serving_thread(lambda: acl_client.ok(fr.mkdir(next(unique), ROOT_ID, "d", 0o777, umask=0o022)))
    serving_thread(
        lambda: acl_client.ok(fr.create(next(unique), ROOT_ID, "f", mode=0o100666, umask=0o077))
    )
    fifo = stat.S_IFIFO | 0o666
    serving_thread(lambda: acl_client.ok(fr.mknod(next(unique), ROOT_ID, "p", fifo, umask=0o027)))
    assert stat.S_IMODE((share / "d").stat().st_mode) == 0o755
    assert stat.S_IMODE((share / "f").stat().st_mode) == 0o600
    assert stat.S_IMODE((share / "p").lstat().st_mode) == 0o640
    assert os.umask(0) == 0  # the process umask is untouched: only the thread's changed


def test_a_default_acl_replaces_the_umask(
    acl_client: FuseClient, share: Path, serving_thread: Callable[[Callable[[], bytes]], bytes]
) -> None:
    (share / "shared").mkdir(0o775)
    os.setxattr(share / "shared", ACL_DEFAULT, user_rw_acl(1000))
    parent = acl_client.lookup(ROOT_ID, "shared").nodeid
    serving_thread(lambda: acl_client.ok(fr.create(30, parent, "f", mode=0o100666, umask=0o077)))
    made = share / "shared" / "f"
    assert os.getxattr(made, ACL_ACCESS) == user_rw_acl(1000)
    assert stat.S_IMODE(made.stat().st_mode) == 0o664


def test_without_acls_the_mode_is_taken_as_sent(client: FuseClient, share: Path) -> None:
    """The client applied the umask already; the field it still sends must not apply twice."""
    client.ok(fr.create(2, ROOT_ID, "f", mode=0o100664, umask=0o077))
    client.ok(fr.mkdir(3, ROOT_ID, "d", 0o775, umask=0o077))
    assert stat.S_IMODE((share / "f").stat().st_mode) == 0o664
    assert stat.S_IMODE((share / "d").stat().st_mode) == 0o775


@pytest.mark.parametrize(
    ("setxattr_flags", "name", "mode_after"),
    [
        (SETXATTR_ACL_KILL_SGID, ACL_ACCESS, 0o0664),
        (0, ACL_ACCESS, 0o2664),
        (SETXATTR_ACL_KILL_SGID, ACL_DEFAULT, 0o2775),
    ],
)
def test_kill_sgid_clears_set_group_id_for_an_access_acl(
    acl_client: FuseClient, share: Path, setxattr_flags: int, name: bytes, mode_after: int
) -> None:
    """The guest says the caller may not keep the bit (not in the group, no CAP_FSETID); the
    daemon keeps it by its own CAP_FSETID unless told. A default ACL changes no mode."""
    target = share / "t"
    if name == ACL_DEFAULT:
        target.mkdir()
        os.chmod(target, 0o2775)
    else:
        target.touch()
        os.chmod(target, 0o2600)
    node = acl_client.lookup(ROOT_ID, "t").nodeid
    acl_client.ok(fr.setxattr_ext(2, node, name, user_rw_acl(1000), 0, setxattr_flags))
    assert stat.S_IMODE(target.stat().st_mode) == mode_after


def test_acl_ids_follow_the_id_maps(share: Path, daemon_umask: None) -> None:
    """Under --uid-map/--gid-map the ids inside ACL entries are translated as the kernel of a
    user namespace would: guest 1000 is host 2000 both ways, an unmapped host id shows as
    65534, an unmapped guest id is refused."""
    maps = parse_id_maps("0 0 1,1000 2000 1", "0 0 1,1000 2000 1")
    fs = PassthroughFs(share, FsOptions(posix_acl=True, id_maps=maps))
    try:
        client = FuseClient(FuseServer(fs))
        client.init()
        (share / "f").touch()
        node = client.lookup(ROOT_ID, "f").nodeid
        client.ok(fr.setxattr_ext(2, node, ACL_ACCESS, user_rw_acl(1000)))
        assert os.getxattr(share / "f", ACL_ACCESS) == user_rw_acl(2000)
        assert client.ok(fr.getxattr(3, node, ACL_ACCESS, 1000)) == user_rw_acl(1000)
        os.setxattr(share / "f", ACL_ACCESS, user_rw_acl(3000))
        assert client.ok(fr.getxattr(4, node, ACL_ACCESS, 1000)) == user_rw_acl(65534)
        assert client.errno_of(fr.setxattr_ext(5, node, ACL_ACCESS, user_rw_acl(5000))) == (
            errno.EINVAL
        )
        assert client.errno_of(fr.setxattr_ext(6, node, ACL_ACCESS, b"\2\0\0\0\1")) == (
            errno.EINVAL
        )
        assert os.getxattr(share / "f", ACL_ACCESS) == user_rw_acl(3000)
    finally:
        fs.close()


def test_translate_rules_and_acls_do_not_mix() -> None:
    with pytest.raises(ValueError, match="--translate-uid"):
        FsOptions(posix_acl=True, id_maps=parse_translations(["squash-guest:0:0:1000"], []))
