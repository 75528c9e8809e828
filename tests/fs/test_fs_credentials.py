"""Creating ops run with the caller's fsuid/fsgid: the host kernel sets ownership and checks
permissions as for that user (driven by FUSE request bytes with a uid/gid in the header).
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from pathlib import Path

import pytest

from fsd.fs.credentials import Credentials
from fsd.fuse.abi import MKNOD_IN, ROOT_ID, InitFlag, Opcode
from fsd.testing import fuse_requests as fr
from fsd.testing.fuse_requests import FuseClient

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching credentials needs root")

USER = 1000


def _z(name: str) -> bytes:
    return name.encode() + b"\0"


def as_user(client: FuseClient, opcode: int, nodeid: int, body: bytes) -> bytes:
    """One request from uid/gid 1000; the reply bytes."""
    data = fr.request(opcode, client.next_unique(), nodeid, body, uid=USER, gid=USER)
    return client.call(data)


def ok(reply: bytes) -> fr.Entry:
    parsed = fr.parse_reply(reply)
    assert parsed.error == 0, os.strerror(-parsed.error)
    return fr.parse_entry(parsed.payload)


def error(reply: bytes) -> int:
    return -fr.parse_reply(reply).error


def test_created_nodes_belong_to_the_caller(client: FuseClient, share: Path) -> None:
    os.chmod(share, 0o777)
    u = {"uid": USER, "gid": USER}
    ok(client.call(fr.mkdir(client.next_unique(), ROOT_ID, "dir", 0o755, **u)))
    ok(client.call(fr.create(client.next_unique(), ROOT_ID, "file", **u)))
    ok(as_user(client, Opcode.SYMLINK, ROOT_ID, _z("link") + _z("file")))
    ok(
        as_user(
            client,
            Opcode.MKNOD,
            ROOT_ID,
            MKNOD_IN.pack(stat.S_IFIFO | 0o600, 0, 0, 0) + _z("fifo"),
        )
    )
    for name in ("dir", "file", "link", "fifo"):
        st = os.lstat(share / name)
        assert (st.st_uid, st.st_gid) == (USER, USER), name
    # The serving thread is back to the daemon's own credentials.
    assert Credentials.current() == (0, 0)
    # A root caller creates as root without switching.
    ok(client.call(fr.mkdir(client.next_unique(), ROOT_ID, "rootdir")))
    assert os.stat(share / "rootdir").st_uid == 0


def test_the_host_kernel_denies_what_the_caller_may_not_do(client: FuseClient, share: Path) -> None:
    os.chmod(share, 0o755)  # root's, not writable for uid 1000
    u = {"uid": USER, "gid": USER}
    assert error(client.call(fr.mkdir(client.next_unique(), ROOT_ID, "d", **u))) == errno.EACCES
    assert error(client.call(fr.create(client.next_unique(), ROOT_ID, "f", **u))) == errno.EACCES
    body = _z("l") + _z("target")
    assert error(as_user(client, Opcode.SYMLINK, ROOT_ID, body)) == errno.EACCES
    assert os.listdir(share) == []
    assert Credentials.current() == (0, 0)


def test_group_ownership_follows_the_host_rules(client: FuseClient, share: Path) -> None:
    os.chmod(share, 0o755)
    (share / "team").mkdir()
    os.chown(share / "team", 0, 1234)
    os.chmod(share / "team", 0o2777)  # setgid: new entries take the directory's group
    (share / "group-only").mkdir()
    os.chown(share / "group-only", 0, 1001)
    os.chmod(share / "group-only", 0o770)
    team = client.lookup(ROOT_ID, "team").nodeid
    group_only = client.lookup(ROOT_ID, "group-only").nodeid
    u = {"uid": USER, "gid": USER}
    ok(client.call(fr.mkdir(client.next_unique(), team, "sub", **u)))
    st = os.stat(share / "team" / "sub")
    assert (st.st_uid, st.st_gid) == (USER, 1234)
    assert st.st_mode & stat.S_ISGID
    # Only the request's gid counts: FUSE does not send supplementary groups.
    assert error(client.call(fr.create(client.next_unique(), group_only, "f", **u))) == errno.EACCES
    fr_gid = {"uid": USER, "gid": 1001}
    ok(client.call(fr.create(client.next_unique(), group_only, "f", **fr_gid)))
    assert os.stat(share / "group-only" / "f").st_gid == 1001


def test_a_supplementary_group_from_the_client_counts_for_creates(
    client: FuseClient, share: Path
) -> None:
    """CREATE_SUPP_GROUP: the client adds the caller's supplementary group that owns the
    parent; the serving thread holds it for the call, and gives it back."""
    offered = fr.DEFAULT_INIT_FLAGS | InitFlag.CREATE_SUPP_GROUP | InitFlag.INIT_EXT
    assert (client.init(flags=offered).flags2 << 32) & InitFlag.CREATE_SUPP_GROUP
    os.chmod(share, 0o755)
    (share / "group-only").mkdir()
    os.chown(share / "group-only", 0, 1001)
    os.chmod(share / "group-only", 0o770)
    parent = client.lookup(ROOT_ID, "group-only").nodeid
    groups = os.getgroups()
    u = {"uid": USER, "gid": USER}
    for request in (
        fr.create(client.next_unique(), parent, "f", **u),
        fr.mkdir(client.next_unique(), parent, "d", **u),
        fr.request(Opcode.SYMLINK, client.next_unique(), parent, _z("l") + _z("f"), **u),
    ):
        assert error(client.call(request)) == errno.EACCES
        ok(client.call(fr.with_extensions(request, fr.supp_group(1001))))
    st = os.stat(share / "group-only" / "f")
    assert (st.st_uid, st.st_gid) == (USER, USER)  # the group only let the caller in
    assert sorted(os.listdir(share / "group-only")) == ["d", "f", "l"]
    assert os.getgroups() == groups
    assert Credentials.current() == (0, 0)
    # A group the caller is not given stays out: another group's directory is refused.
    (share / "other").mkdir()
    os.chown(share / "other", 0, 1002)
    os.chmod(share / "other", 0o770)
    other = client.lookup(ROOT_ID, "other").nodeid
    request = fr.create(client.next_unique(), other, "f", **u)
    assert error(client.call(fr.with_extensions(request, fr.supp_group(1001)))) == errno.EACCES


@pytest.mark.parametrize(
    "extensions",
    [
        bytes(8),  # a size of 0
        struct.pack("<II", 24, 32) + bytes(8),  # longer than what is there
        struct.pack("<II", 12, 32) + bytes(4),  # not a multiple of 8
    ],
)
def test_malformed_request_extensions_are_refused(
    client: FuseClient, share: Path, extensions: bytes
) -> None:
    request = fr.mkdir(client.next_unique(), ROOT_ID, "d")
    assert error(client.call(fr.with_extensions(request, extensions))) == errno.EINVAL
    assert os.listdir(share) == []


def test_unknown_request_extensions_are_skipped(client: FuseClient, share: Path) -> None:
    request = fr.mkdir(client.next_unique(), ROOT_ID, "d")
    ok(client.call(fr.with_extensions(request, struct.pack("<II", 8, 40))))
    assert os.listdir(share) == ["d"]
