"""``--announce-submounts``: a mount point inside the share is known as one
(``Filesystem.is_submount``), INIT grants SUBMOUNTS, and the server sets ``ATTR_SUBMOUNT`` in
its entries' ``fuse_attr.flags`` (LOOKUP and READDIRPLUS). Mounting needs root.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsd.fs import FsOptions, PassthroughFs
from fsd.fuse import FuseServer
from fsd.fuse.abi import ATTR_SUBMOUNT, ROOT_ID, InitFlag
from fsd.testing.fuse_requests import DEFAULT_INIT_FLAGS, FuseClient

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def submount(share: Path) -> Iterator[Path]:
    """A tmpfs mounted at share/mnt, with a directory and a file in it."""
    mnt = share / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "fsd-test", str(mnt)], check=True)
    (mnt / "inner").mkdir()
    (mnt / "file").write_text("x")
    (share / "plain").mkdir()
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _client(share: Path, announce: bool) -> tuple[PassthroughFs, FuseClient]:
    fs = PassthroughFs(share, FsOptions(announce_submounts=announce))
    client = FuseClient(FuseServer(fs))
    return fs, client


def test_a_mount_point_is_announced(share: Path, submount: Path) -> None:
    fs, client = _client(share, True)
    try:
        init = client.init(flags=DEFAULT_INIT_FLAGS | InitFlag.SUBMOUNTS)
        assert init.flags & InitFlag.SUBMOUNTS
        assert fs.config.announce_submounts
        mnt = client.lookup(ROOT_ID, "mnt")
        assert fs.is_submount(mnt.nodeid)
        inner = client.lookup(mnt.nodeid, "inner").nodeid
        file = client.lookup(mnt.nodeid, "file").nodeid
        plain = client.lookup(ROOT_ID, "plain").nodeid
        assert not any(fs.is_submount(n) for n in (inner, file, plain, ROOT_ID))
        # Its own st_dev: inode numbers inside cannot collide with the share's.
        assert os.stat(submount).st_dev != os.stat(share).st_dev
        assert not fs.is_submount(999)
    finally:
        fs.close()


def test_not_announced_unless_asked(share: Path, submount: Path) -> None:
    fs, client = _client(share, False)
    try:
        init = client.init(flags=DEFAULT_INIT_FLAGS | InitFlag.SUBMOUNTS)
        assert not init.flags & InitFlag.SUBMOUNTS
        assert not fs.is_submount(client.lookup(ROOT_ID, "mnt").nodeid)
    finally:
        fs.close()


def test_the_entry_carries_attr_submount(share: Path, submount: Path) -> None:
    fs, client = _client(share, True)
    try:
        client.init(flags=DEFAULT_INIT_FLAGS | InitFlag.SUBMOUNTS)
        assert client.lookup(ROOT_ID, "mnt").attr.flags & ATTR_SUBMOUNT
        assert not client.lookup(ROOT_ID, "plain").attr.flags & ATTR_SUBMOUNT
        plus = {e.name: e for e in client.listdir(ROOT_ID, plus=True)}
        mnt_entry = plus[b"mnt"].entry
        assert mnt_entry is not None
        assert mnt_entry.attr.flags & ATTR_SUBMOUNT
    finally:
        fs.close()
