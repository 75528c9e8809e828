"""virtiofsd's xattr mapping rules (fsd.fs.xattrmap): the parser, virtiofsd's own examples,
and properties checked with hypothesis."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fsd.fs.xattrmap import Rule, Verdict, XattrMapError, parse_xattrmap

# --- parsing ---------------------------------------------------------------------------------


def test_one_rule() -> None:
    m = parse_xattrmap(":prefix:client:trusted.:user.virtiofs.:")
    assert m.rules == (Rule("prefix", True, False, b"trusted.", b"user.virtiofs."),)


def test_rules_with_their_own_delimiters_and_white_space() -> None:
    m = parse_xattrmap(
        """
        /prefix/all/trusted./user.virtiofs./
        /bad/server//trusted./
        |bad|client|user.virtiofs.||
        :ok:all:::
        """
    )
    assert m.rules == (
        Rule("prefix", True, True, b"trusted.", b"user.virtiofs."),
        Rule("bad", False, True, b"", b"trusted."),
        Rule("bad", True, False, b"user.virtiofs.", b""),
        Rule("ok", True, True, b"", b""),
    )
    assert m.terminated()


def test_map_expands_to_three_rules() -> None:
    assert parse_xattrmap(":map:trusted.:user.virtiofs.:").rules == (
        Rule("prefix", True, True, b"trusted.", b"user.virtiofs."),
        Rule("bad", True, True, b"user.virtiofs.", b"trusted."),
        Rule("ok", True, True, b"", b""),
    )
    assert parse_xattrmap(":map::user.virtiofs.:").rules == (
        Rule("prefix", True, True, b"", b"user.virtiofs."),
        Rule("bad", True, True, b"", b""),
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "at least one rule"),
        ("   ", "at least one rule"),
        (":prefix:client:hi", "rule 1: ':prefix:client:hi' is not closed"),
        (":ok:all::: :TOMATOPIRATE:all:::", "rule 2: type 'TOMATOPIRATE'"),
        ("/prefix/helloworld///", "rule 1: scope 'helloworld'"),
        (":map:a:b: :ok:all:::", "rule 2: nothing may follow the 'map' rule"),
        (":map:a:b: :map:a:b:", "rule 2: nothing may follow"),
    ],
)
def test_bad_maps_name_the_rule(text: str, problem: str) -> None:
    with pytest.raises(XattrMapError, match=problem):
        parse_xattrmap(text)


# --- what the rules do -------------------------------------------------------------------------


def test_prefix_everything() -> None:
    """virtiofsd's example 1: all guest xattrs live under user.virtiofs. on the host."""
    m = parse_xattrmap(":map::user.virtiofs.:")
    assert m.to_host(b"security.selinux") == b"user.virtiofs.security.selinux"
    assert m.to_host(b"user.x") == b"user.virtiofs.user.x"
    host = [b"user.virtiofs.trusted.a", b"security.selinux", b"user.other"]
    assert m.to_guest(host) == [b"trusted.a"]
    assert m.renames(b"security.capability")


def test_refusals_and_their_errnos() -> None:
    m = parse_xattrmap(
        ":bad:all:security.:security.: :unsupported:all:trusted.:trusted.: :ok:all:::"
    )
    assert m.verdict(b"security.x") == (Verdict.DENY, b"")
    for getting, code in ((False, errno.EPERM), (True, errno.ENODATA)):
        with pytest.raises(OSError, match="refused") as info:
            m.to_host(b"security.x", getting=getting)
        assert info.value.errno == code
    with pytest.raises(OSError, match="not supported") as info:
        m.to_host(b"trusted.x")
    assert info.value.errno == errno.ENOTSUP
    assert m.to_guest([b"security.x", b"trusted.y", b"user.z"]) == [b"user.z"]
    assert not m.renames(b"security.capability")


def test_a_name_no_rule_matches_is_refused_and_hidden() -> None:
    m = parse_xattrmap(":prefix:client:trusted.:user.virtiofs.:")
    assert not m.terminated()
    assert m.to_host(b"trusted.a") == b"user.virtiofs.trusted.a"
    with pytest.raises(OSError, match="refused") as info:
        m.to_host(b"user.a")
    assert info.value.errno == errno.EPERM
    assert m.to_guest([b"user.virtiofs.trusted.a"]) == []  # no server-scope rule at all


# --- properties --------------------------------------------------------------------------------

_ALPHABET = "abt.-_sy"
names = st.binary(min_size=1, max_size=12).filter(lambda b: b"\0" not in b) | st.text(
    _ALPHABET, min_size=1, max_size=12
).map(str.encode)
prefixes = st.text(_ALPHABET, max_size=6)


@given(prefix=prefixes.filter(bool), name=names)
def test_map_all_round_trips_and_hides_the_rest(prefix: str, name: bytes) -> None:
    m = parse_xattrmap(f":map::{prefix}:")
    host = m.to_host(name)
    assert host == prefix.encode() + name
    assert m.to_guest([host]) == [name]
    if not name.startswith(prefix.encode()):
        assert m.to_guest([name]) == []


@given(key=prefixes.filter(bool), prefix=prefixes.filter(bool), name=names)
def test_map_key_round_trips_and_never_reaches_the_host_key(
    key: str, prefix: str, name: bytes
) -> None:
    """A passing guest name comes back unchanged from a listing, and no guest name reaches a
    host name under ``key`` (the host's own, e.g. trusted.*) except through ``prefix``."""
    m = parse_xattrmap(f":map:{key}:{prefix}:")
    verdict, host = m.verdict(name)
    if verdict is not Verdict.PASS:
        assert name.startswith(prefix.encode())
        return
    assert m.to_guest([host]) == [name]
    assert host.startswith(prefix.encode()) or not host.startswith(key.encode())


@given(name=names)
def test_virtiofsds_example_2_equals_its_map_rule(name: bytes) -> None:
    long = parse_xattrmap(
        "/prefix/all/trusted./user.virtiofs./ /bad/server//trusted./ "
        "/bad/client/user.virtiofs.// /ok/all///"
    )
    short = parse_xattrmap("/map/trusted./user.virtiofs./")
    assert long.verdict(name) == short.verdict(name)
    assert long.to_guest([name]) == short.to_guest([name])


@given(
    rules=st.lists(
        st.tuples(
            st.sampled_from(["prefix", "ok", "bad", "unsupported"]),
            st.sampled_from(["client", "server", "all"]),
            prefixes,
            prefixes,
        ),
        min_size=1,
        max_size=5,
    ),
    delimiters=st.lists(st.sampled_from(":/|,;"), min_size=5, max_size=5),
)
def test_any_rule_list_parses_back(
    rules: list[tuple[str, str, str, str]], delimiters: list[str]
) -> None:
    text = " ".join(d + d.join(rule) + d for d, rule in zip(delimiters, rules, strict=False))
    parsed = parse_xattrmap(text)
    scopes = {"client": (True, False), "server": (False, True), "all": (True, True)}
    assert parsed.rules == tuple(
        Rule(kind, *scopes[scope], key.encode(), prepend.encode())
        for kind, scope, key, prepend in rules
    )
