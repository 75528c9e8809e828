"""``--uid-map``/``--gid-map``: the pure parser and lookups, then the filesystem applying them to
real request bytes (created files' host owners, reported owners, chown, ACCESS, unmapped ids).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fsd.fs import FsOptions, PassthroughFs
from fsd.fs.idmap import IDENTITY, OVERFLOW_ID, IdMap, IdMaps, parse_id_maps, parse_idmap
from fsd.fuse import FuseServer
from fsd.fuse.abi import ROOT_ID
from fsd.testing import fuse_requests as fr
from fsd.testing.fuse_requests import FuseClient

# --- parsing ---------------------------------------------------------------------------------


def test_crosvm_syntax() -> None:
    m = parse_idmap("0 0 1,1000 2000 1")
    assert (m.to_host(0), m.to_host(1000), m.to_host(1), m.to_host(999)) == (0, 2000, None, None)
    assert (m.to_guest(0), m.to_guest(2000), m.to_guest(1000)) == (0, 1000, OVERFLOW_ID)
    assert str(m) == "0 0 1,1000 2000 1"


def test_ranges_whitespace_and_order() -> None:
    m = parse_idmap("  1000\t100000  65536 ,0 1000 1")
    assert m.to_host(1000) == 100000
    assert m.to_host(1000 + 65535) == 100000 + 65535
    assert m.to_host(1000 + 65536) is None
    assert m.to_guest(1000) == 0
    assert m == parse_idmap("0 1000 1,1000 100000 65536")  # the same mapping in another order


def test_whole_range_is_the_identity() -> None:
    assert parse_idmap("0 0 4294967295") == IDENTITY
    assert IDENTITY.to_host(4294967294) == 4294967294
    assert IDENTITY.to_host(4294967295) is None  # (uid_t) -1 is never mapped


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("  ", "empty"),
        ("0 0", "expected 'inner outer count'"),
        ("0 0 1 1", "expected 'inner outer count'"),
        ("0 0 1;1000 1000 1", "separated by commas"),
        ("0 0 1,", "expected 'inner outer count'"),
        ("a 0 1", "decimal"),
        ("-1 0 1", "decimal"),
        ("0x10 0 1", "decimal"),
        ("0 0 0", "count must be >= 1"),
        ("0 0 4294967296", "leave 0..4294967294"),
        ("4294967295 0 1", "leave 0..4294967294"),
        ("0 4294967200 100", "outer ids"),
        ("0 0 10,5 100 1", "overlap on the inner (guest) side"),
        ("0 100 10,50 105 1", "overlap on the outer (host) side"),
        (",".join(f"{i} {i} 1" for i in range(341)), "at most 340"),
    ],
)
def test_bad_maps_name_the_problem(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_idmap(text)


def test_flags() -> None:
    assert parse_id_maps(None, None) is None
    maps = parse_id_maps("0 0 1,1000 2000 1", None)
    assert maps is not None
    assert maps.gid is IDENTITY
    assert maps.uid.to_host(1000) == 2000
    with pytest.raises(ValueError, match="--gid-map 'x'"):
        parse_id_maps(None, "x")


# --- properties ------------------------------------------------------------------------------


@st.composite
def id_maps(draw: st.DrawFn) -> IdMap:
    """A valid map: extents with gaps on the inner side, shuffled with gaps on the outer."""
    counts = draw(st.lists(st.integers(1, 5000), min_size=1, max_size=8))
    inner_gaps = draw(st.lists(st.integers(0, 10**6), min_size=len(counts), max_size=len(counts)))
    outer_gaps = draw(st.lists(st.integers(0, 10**6), min_size=len(counts), max_size=len(counts)))
    order = draw(st.permutations(range(len(counts))))
    inners, pos = [], 0
    for count, gap in zip(counts, inner_gaps, strict=True):
        inners.append(pos + gap)
        pos += gap + count
    outers = [0] * len(counts)
    pos = 0
    for i, gap in zip(order, outer_gaps, strict=True):
        outers[i] = pos + gap
        pos += gap + counts[i]
    return parse_idmap(
        ",".join(f"{a} {b} {c}" for a, b, c in zip(inners, outers, counts, strict=True))
    )


@given(id_maps(), st.data())
def test_round_trips(m: IdMap, data: st.DataObject) -> None:
    assert parse_idmap(str(m)) == m
    ext = data.draw(st.sampled_from(m.extents))
    offset = data.draw(st.integers(0, ext.count - 1))
    assert m.to_host(ext.inner + offset) == ext.outer + offset
    assert m.to_guest(ext.outer + offset) == ext.inner + offset
    guest = data.draw(st.integers(0, 2**32 - 2))
    host = m.to_host(guest)
    if host is not None:
        assert m.to_guest(host) == guest


@given(id_maps(), st.integers(0, 3 * 10**6))
def test_lookups_match_a_brute_force_model(m: IdMap, ident: int) -> None:
    host = [e.outer + ident - e.inner for e in m.extents if e.inner <= ident < e.inner + e.count]
    guest = [e.inner + ident - e.outer for e in m.extents if e.outer <= ident < e.outer + e.count]
    assert m.to_host(ident) == (host[0] if host else None)
    assert m.to_guest(ident) == (guest[0] if guest else OVERFLOW_ID)


# --- the filesystem with maps ----------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching credentials needs root")
MAPS = IdMaps(parse_idmap("0 0 1,1000 2000 1"), parse_idmap("0 0 1,1000 2000 1"))


@pytest.fixture
def mapped(share: Path) -> Iterator[FuseClient]:
    fs = PassthroughFs(share, FsOptions(id_maps=MAPS))
    client = FuseClient(FuseServer(fs))
    client.init()
    yield client
    fs.close()


def _entry(reply: bytes) -> fr.Entry:
    parsed = fr.parse_reply(reply)
    assert parsed.error == 0, os.strerror(-parsed.error)
    return fr.parse_entry(parsed.payload)


@needs_root
def test_creates_as_the_host_ids_and_reports_guest_ids(mapped: FuseClient, share: Path) -> None:
    os.chmod(share, 0o777)
    u = {"uid": 1000, "gid": 1000}
    made = [
        _entry(mapped.call(fr.mkdir(mapped.next_unique(), ROOT_ID, "dir", 0o755, **u))),
        _entry(mapped.call(fr.create(mapped.next_unique(), ROOT_ID, "file", **u))),
    ]
    for name in ("dir", "file"):
        st_ = os.lstat(share / name)
        assert (st_.st_uid, st_.st_gid) == (2000, 2000), name
    assert [(e.attr.uid, e.attr.gid) for e in made] == [(1000, 1000)] * 2
    assert (mapped.lookup(ROOT_ID, "file").attr.uid, mapped.getattr(made[0].nodeid).gid) == (
        1000,
        1000,
    )


def test_unmapped_host_owners_show_as_overflow(mapped: FuseClient, share: Path) -> None:
    for file, owner in (("mine", 2000), ("root", 0), ("stranger", 3000), ("guestid", 1000)):
        (share / file).write_text(file)
        os.chown(share / file, owner, owner)
    plus = {d.name: d.entry for d in mapped.listdir(ROOT_ID, plus=True) if d.entry is not None}
    want = {b"mine": 1000, b"root": 0, b"stranger": OVERFLOW_ID, b"guestid": OVERFLOW_ID}
    assert {name: (e.attr.uid, e.attr.gid) for name, e in plus.items() if e.nodeid} == {
        name: (i, i) for name, i in want.items()
    }
    for key, i in want.items():
        assert mapped.lookup(ROOT_ID, key).attr.uid == i
    assert mapped.getattr(ROOT_ID).uid == 0


@needs_root
def test_chown_translates_and_refuses_unmapped_ids(mapped: FuseClient, share: Path) -> None:
    (share / "f").write_text("x")
    node = mapped.lookup(ROOT_ID, "f").nodeid
    payload = mapped.ok(fr.setattr(mapped.next_unique(), node, uid=1000, gid=1000))
    assert (fr.parse_attr_out(payload)[2].uid, fr.parse_attr_out(payload)[2].gid) == (1000, 1000)
    assert (os.stat(share / "f").st_uid, os.stat(share / "f").st_gid) == (2000, 2000)
    assert mapped.errno_of(fr.setattr(mapped.next_unique(), node, uid=2000)) == errno.EINVAL
    assert mapped.errno_of(fr.setattr(mapped.next_unique(), node, gid=OVERFLOW_ID)) == errno.EINVAL
    assert (os.stat(share / "f").st_uid, os.stat(share / "f").st_gid) == (2000, 2000)


@needs_root
def test_unmapped_callers_cannot_create(mapped: FuseClient, share: Path) -> None:
    os.chmod(share, 0o777)
    for uid, gid in ((1001, 1000), (1000, 5), (2000, 2000)):
        got = mapped.errno_of(fr.mkdir(mapped.next_unique(), ROOT_ID, "d", uid=uid, gid=gid))
        assert got == errno.EOVERFLOW, (uid, gid)
    assert os.listdir(share) == []


def test_access_checks_the_callers_host_ids(mapped: FuseClient, share: Path) -> None:
    (share / "f").write_text("x")
    os.chown(share / "f", 2000, 2000)
    os.chmod(share / "f", 0o600)
    node = mapped.lookup(ROOT_ID, "f").nodeid

    def access(uid: int) -> int:
        return mapped.errno_of(fr.access(mapped.next_unique(), node, os.R_OK, uid=uid, gid=uid))

    assert access(1000) == 0  # guest 1000 is host 2000, the owner
    assert access(2000) == errno.EACCES  # guest 2000 is unmapped: not the owner
    assert access(0) == 0  # guest root is host root


def test_no_maps_is_the_identity(client: FuseClient, share: Path) -> None:
    (share / "f").write_text("x")
    os.chown(share / "f", 3000, 3000)
    attr = client.lookup(ROOT_ID, "f").attr
    assert (attr.uid, attr.gid) == (3000, 3000)


def test_serve_refuses_a_bad_map(
    share: Path, capsys: pytest.CaptureFixture[str], fsd_logging: None
) -> None:
    from fsd.cli import main

    argv = ["serve", "--socket-path", str(share / "s"), "--shared-dir", str(share)]
    assert main([*argv, "--uid-map", "0 0 1", "--gid-map", "0 0 1;1 1 1"]) == 2
    err = capsys.readouterr().err
    assert "--gid-map '0 0 1;1 1 1'" in err
    assert len(err.splitlines()) == 1
    assert not (share / "s").exists()
