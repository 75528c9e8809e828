"""FsOptions (crosvm --cfg keys) and how the server honours them."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from fsd.fs import FsOptions, PassthroughFs, parse_cfg
from fsd.fuse import FuseServer
from fsd.fuse.abi import FOPEN_CACHE_DIR, FOPEN_DIRECT_IO, FOPEN_KEEP_CACHE, ROOT_ID, InitFlag
from fsd.testing import fuse_requests as fr
from fsd.testing.fuse_requests import FuseClient


def test_defaults_match_crosvm() -> None:
    assert FsOptions() == FsOptions(cache="auto", timeout=5, negative_timeout=0, writeback=False)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", FsOptions()),
        ("cache=never", FsOptions(cache="never")),
        ("cache_policy=always,timeout=0", FsOptions(cache="always", timeout=0)),
        ("10", FsOptions(timeout=10)),
        ("writeback", FsOptions(writeback=True)),
        ("writeback=false, negative_timeout=2.5", FsOptions(negative_timeout=2.5)),
        ("cache='auto'", FsOptions()),
    ],
)
def test_parse_cfg(text: str, expected: FsOptions) -> None:
    assert parse_cfg(text) == expected


@pytest.mark.parametrize(
    "text", ["cache=sometimes", "timeout=-1", "timeout=abc", "dax=true", "writeback=maybe"]
)
def test_parse_cfg_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_cfg(text)


def _client(share: Path, **options: object) -> tuple[FuseClient, PassthroughFs]:
    fs = PassthroughFs(share, FsOptions(**options))  # type: ignore[arg-type]
    client = FuseClient(FuseServer(fs))
    client.init()
    return client, fs


@pytest.mark.parametrize(
    ("cache", "file_flags", "dir_flags"),
    [("never", FOPEN_DIRECT_IO, 0), ("auto", 0, 0), ("always", FOPEN_KEEP_CACHE, FOPEN_CACHE_DIR)],
)
def test_cache_policy_open_flags(share: Path, cache: str, file_flags: int, dir_flags: int) -> None:
    (share / "f").touch()
    client, fs = _client(share, cache=cache)
    try:
        nodeid = client.lookup(ROOT_ID, "f").nodeid
        assert fr.parse_open(client.ok(fr.open_(2, nodeid)))[1] == file_flags
        assert fr.parse_open(client.ok(fr.opendir(4, ROOT_ID)))[1] == dir_flags
    finally:
        fs.close()


def test_timeouts_in_replies(share: Path) -> None:
    (share / "f").touch()
    client, fs = _client(share, timeout=1.5)
    try:
        entry = client.lookup(ROOT_ID, "f")
        assert (entry.entry_valid, entry.entry_valid_nsec) == (1, 500_000_000)
        assert (entry.attr_valid, entry.attr_valid_nsec) == (1, 500_000_000)
    finally:
        fs.close()


def test_negative_timeout_caches_enoent(share: Path) -> None:
    client, fs = _client(share, negative_timeout=3)
    try:
        entry = client.lookup(ROOT_ID, "missing")
        assert entry.nodeid == 0
        assert entry.entry_valid == 3
    finally:
        fs.close()
    client, fs = _client(share)
    try:
        assert client.errno_of(fr.lookup(2, ROOT_ID, "missing")) == errno.ENOENT
    finally:
        fs.close()


def test_writeback_is_requested_and_upgrades_write_only_opens(share: Path) -> None:
    (share / "f").write_bytes(b"abc")
    client, fs = _client(share, writeback=True)
    try:
        assert client.init().flags & InitFlag.WRITEBACK_CACHE
        nodeid = client.lookup(ROOT_ID, "f").nodeid
        fh = client.open(nodeid, os.O_WRONLY | os.O_APPEND)
        # The kernel's page cache may read through a write-only handle in writeback mode.
        assert client.read(nodeid, fh, 0, 3) == b"abc"
        client.write(nodeid, fh, 0, b"X")  # no O_APPEND: lands at offset 0
        assert (share / "f").read_bytes() == b"Xbc"
    finally:
        fs.close()
    client, fs = _client(share)
    try:
        assert not client.init().flags & InitFlag.WRITEBACK_CACHE
    finally:
        fs.close()
