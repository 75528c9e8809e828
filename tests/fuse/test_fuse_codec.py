"""Pure codec rules: names, attributes, timeouts."""

from __future__ import annotations

import errno
import os

import pytest

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
