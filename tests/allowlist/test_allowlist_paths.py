"""Lexical normalization: crosvm's ``normalize_lexically`` cases plus our stricter refusals."""

import pytest

from fsd.allowlist.paths import InvalidPathError, format_path, normalize


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/", ()),
        ("//", ()),
        ("/a", ("a",)),
        ("/a/b", ("a", "b")),
        ("/a/b/", ("a", "b")),
        ("//a///b//", ("a", "b")),
        ("/a/./b", ("a", "b")),
        ("/./a/.", ("a",)),
        ("/a/../b", ("b",)),
        ("/a/b/../../c", ("c",)),
        ("/a/..", ()),
        ("/a/b/..", ("a",)),
        ("/...", ("...",)),
        ("/a/.b/..c", ("a", ".b", "..c")),
        ("/ spaced /é", (" spaced ", "é")),
        ("/a\\b", ("a\\b",)),
    ],
)
def test_normalize(raw: str, expected: tuple[str, ...]) -> None:
    assert normalize(raw) == expected


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("/..", "climbs above"),
        ("/a/../..", "climbs above"),
        ("/allowed/../../..", "climbs above"),
        ("/../a", "climbs above"),
        ("", "must start with '/'"),
        ("a/b", "must start with '/'"),
        ("..", "must start with '/'"),
        ("./a", "must start with '/'"),
        ("/a\0b", "NUL"),
        ("/a/\ud800", "lone surrogate"),
    ],
)
def test_normalize_refuses(raw: str, why: str) -> None:
    with pytest.raises(InvalidPathError, match=why):
        normalize(raw)


@pytest.mark.parametrize("path", [(), ("a",), ("a", "b c", "é")])
def test_format_path_round_trips(path: tuple[str, ...]) -> None:
    assert normalize(format_path(path)) == path


def test_format_path() -> None:
    assert format_path(()) == "/"
    assert format_path(("a", "b")) == "/a/b"
