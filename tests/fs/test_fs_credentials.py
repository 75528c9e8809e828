"""Creating ops run with the caller's fsuid/fsgid: the host kernel sets ownership and checks
permissions as for that user (driven by FUSE request bytes with a uid/gid in the header).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from fsd.fs.credentials import Credentials
from fsd.fuse.abi import MKNOD_IN, ROOT_ID, Opcode
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
