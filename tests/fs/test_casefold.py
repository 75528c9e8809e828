"""crosvm's ``ascii_casefold``: names found, removed and renamed in any ASCII case."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsd.allowlist import Allowlist, normalize
from fsd.fs import FsOptions, PassthroughFs, parse_cfg
from fsd.fuse import FuseServer
from fsd.fuse.abi import ROOT_ID
from fsd.testing import fuse_requests as fr
from fsd.testing.fuse_requests import FuseClient


@pytest.fixture
def folding(share: Path, daemon_umask: None) -> Iterator[FuseClient]:
    fs = PassthroughFs(share, parse_cfg("ascii_casefold=true"))
    client = FuseClient(FuseServer(fs))
    client.init()
    yield client
    fs.close()


def test_a_name_is_found_in_any_ascii_case(folding: FuseClient, share: Path) -> None:
    (share / "Docs").mkdir()
    (share / "Docs" / "ReadMe.TXT").write_text("hello")
    docs = folding.lookup(ROOT_ID, "docs")
    assert docs == folding.lookup(ROOT_ID, "DOCS") == folding.lookup(ROOT_ID, "Docs")
    readme = folding.lookup(docs.nodeid, "readme.txt")
    assert readme.nodeid == folding.lookup(docs.nodeid, "README.txt").nodeid
    assert folding.errno_of(fr.lookup(9, docs.nodeid, "readme.md")) == errno.ENOENT
    # ASCII only: another letter than its own case does not match.
    (share / "Docs" / "\u00e9t\u00e9").touch()
    assert folding.errno_of(fr.lookup(10, docs.nodeid, "\u00c9T\u00c9")) == errno.ENOENT


def test_the_exact_spelling_wins_and_new_names_are_kept_as_spelt(
    folding: FuseClient, share: Path
) -> None:
    (share / "A").touch()
    (share / "a").touch()
    assert folding.lookup(ROOT_ID, "a").attr.ino == os.stat(share / "a").st_ino
    assert folding.lookup(ROOT_ID, "A").attr.ino == os.stat(share / "A").st_ino
    # Builds the root's folded names: no b in any case yet.
    assert folding.errno_of(fr.lookup(7, ROOT_ID, "B")) == errno.ENOENT
    folding.create(ROOT_ID, "b.Txt")
    assert sorted(os.listdir(share)) == ["A", "a", "b.Txt"]
    # A name fsd created since the listing is found folded too.
    assert folding.lookup(ROOT_ID, "B.TXT").attr.ino == os.stat(share / "b.Txt").st_ino


def test_remove_and_rename_use_the_host_spelling(folding: FuseClient, share: Path) -> None:
    (share / "File.txt").write_text("x")
    (share / "Dir").mkdir()
    (share / "Old").write_text("y")
    folding.ok(fr.unlink(2, ROOT_ID, "file.TXT"))
    folding.ok(fr.rmdir(3, ROOT_ID, "dir"))
    folding.ok(fr.rename(4, ROOT_ID, "OLD", ROOT_ID, "new"))
    assert sorted(os.listdir(share)) == ["new"]
    assert folding.errno_of(fr.unlink(5, ROOT_ID, "gone")) == errno.ENOENT


def test_the_allowlist_judges_the_host_spelling(share: Path, daemon_umask: None) -> None:
    (share / "Public").mkdir()
    (share / "Secret").mkdir()
    allowlist = Allowlist()
    allowlist.add([normalize("/Public")])
    fs = PassthroughFs(share, FsOptions(ascii_casefold=True), allowlist=allowlist)
    try:
        client = FuseClient(FuseServer(fs))
        client.init()
        client.lookup(ROOT_ID, "public")
        assert client.errno_of(fr.lookup(3, ROOT_ID, "secret")) == errno.ENOENT
    finally:
        fs.close()


def test_without_it_names_are_case_sensitive(client: FuseClient, share: Path) -> None:
    (share / "Docs").mkdir()
    assert client.errno_of(fr.lookup(2, ROOT_ID, "docs")) == errno.ENOENT
