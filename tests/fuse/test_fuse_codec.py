"""Pure codec rules: names, attributes, timeouts."""

from __future__ import annotations

import errno
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fsd.fuse import abi, codec
from fsd.fuse.codec import (
    attr_values,
    parse_name,
    parse_symlink,
    parse_two_names,
    split_timeout,
)
from fsd.fuse.errors import ProtocolError


def test_parse_name_takes_up_to_nul() -> None:
    assert parse_name(b"file\0") == b"file"
    assert parse_name(b"file\0garbage after") == b"file"


@pytest.mark.parametrize(
    "body", [b"file", b"\0", b"a/b\0", b"/\0", b"..\0", b".\0", b"x" * 1025 + b"\0"]
)
def test_bad_names_are_einval(body: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_name(body)
    assert info.value.errno == errno.EINVAL


def test_dots_allowed_only_when_asked() -> None:
    assert parse_name(b"..\0", allow_dots=True) == b".."
    assert parse_name(b".\0", allow_dots=True) == b"."
    with pytest.raises(ProtocolError):
        parse_name(b"a/..\0", allow_dots=True)


def test_two_names() -> None:
    assert parse_two_names(b"old\0new\0") == (b"old", b"new")
    with pytest.raises(ProtocolError):
        parse_two_names(b"old\0new")
    with pytest.raises(ProtocolError):
        parse_two_names(b"old")
    with pytest.raises(ProtocolError):
        parse_two_names(b"old\0a/b\0")


def test_symlink_body_is_name_then_target() -> None:
    assert parse_symlink(b"link\0/etc/passwd\0") == (b"link", b"/etc/passwd")
    with pytest.raises(ProtocolError):
        parse_symlink(b"link\0target")
    with pytest.raises(ProtocolError):
        parse_symlink(b"a/b\0target\0")


def test_attr_values_split_nanoseconds() -> None:
    st = os.stat_result(
        (0o100644, 7, 1, 1, 0, 0, 10, 0, 0, 0),
        {
            "st_atime_ns": -1,
            "st_mtime_ns": 1_500_000_000,
            "st_ctime_ns": 0,
            "st_rdev": 0,
            "st_blksize": 4096,
            "st_blocks": 8,
        },
    )
    values = attr_values(st)
    assert len(values) == 16
    assert values[0] == 7  # ino
    assert values[3] == -1  # atime seconds (floor of -1 ns)
    assert values[6] == 999_999_999
    assert (values[4], values[7]) == (1, 500_000_000)


def test_split_timeout() -> None:
    assert split_timeout(0) == (0, 0)
    assert split_timeout(5) == (5, 0)
    assert split_timeout(1.25) == (1, 250_000_000)


@given(
    st.lists(st.integers(0, 2**63 - 1), min_size=7, max_size=7),
    st.lists(st.integers(-(2**62), 2**62), min_size=3, max_size=3),
)
def test_packed_attr_is_attr_values_packed(ints: list[int], times_ns: list[int]) -> None:
    """fuse_attr (the hot path) and attr_values (the readable one) agree, negative times too."""
    mode, ino, dev, nlink, uid, gid, size = ints
    mode, nlink, uid, gid = (
        mode & 0xFFFFFFFF,
        nlink & 0xFFFFFFFF,
        uid & 0xFFFFFFFF,
        gid & 0xFFFFFFFF,
    )
    seconds = [t // 1_000_000_000 for t in times_ns]
    extra = {"st_atime_ns": times_ns[0], "st_mtime_ns": times_ns[1], "st_ctime_ns": times_ns[2],
             "st_blocks": size // 512, "st_blksize": 4096, "st_rdev": dev}  # fmt: skip
    stat = os.stat_result((mode, ino, dev, nlink, uid, gid, size, *seconds), extra)
    assert codec.fuse_attr(stat) == abi.ATTR.pack(*codec.attr_values(stat))
    mapped = codec.mapped_fuse_attr(lambda u: u ^ 1, lambda g: g ^ 2)(stat)
    values = codec.mapped_attr_values(lambda u: u ^ 1, lambda g: g ^ 2)(stat)
    assert mapped == abi.ATTR.pack(*values)
