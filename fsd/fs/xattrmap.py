"""virtiofsd's ``--xattrmap``: rules that rename, pass, hide or refuse xattr names between the
guest (the client) and the host (the server). Pure: names in, names or a verdict out.

A map is a list of rules, each ``<d>type<d>scope<d>key<d>prepend<d>`` with a delimiter ``<d>``
of the rule's choosing (its first character), separated by white space. The first rule that
matches decides:

| type | a name from the guest that starts with *key* | a host name that starts with *prepend* |
|---|---|---|
| ``prefix`` | goes to the host with *prepend* in front | reaches the guest with *prepend* cut off |
| ``ok`` | goes to the host unchanged | reaches the guest unchanged |
| ``bad`` | is refused (EPERM; GETXATTR answers ENODATA) | is hidden from LISTXATTR |
| ``unsupported`` | is refused with ENOTSUP | is hidden from LISTXATTR |

*scope* is ``client`` (the rule looks at guest names), ``server`` (at host names) or ``all``.
``<d>map<d>key<d>prepend<d>`` is shorthand for three rules and must come last: ``prefix all
key prepend``, then (if *key* is not empty) ``bad all prepend key`` so that the guest cannot
reach the renamed names directly nor see the host's own *key* names, then a catch-all (``ok``
if *key* is not empty, ``bad`` otherwise). Rules are tried in order; a name no rule matches is
refused and hidden, as if a final ``bad all`` rule were there (virtiofsd stops on it).

The format is virtiofsd's (``doc/xattr-mapping.md``); the semantics are its
``passthrough/xattrmap.rs``.
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Iterable
from typing import Final

import attrs

__all__ = ["Verdict", "XattrMap", "XattrMapError", "parse_xattrmap"]


class XattrMapError(ValueError):
    """A map that cannot be parsed; the message names the rule (1-based) and the problem."""


class Verdict(enum.Enum):
    """What a guest name's first matching rule says."""

    PASS = "pass"
    DENY = "deny"  # bad: EPERM (ENODATA for GETXATTR)
    UNSUPPORTED = "unsupported"  # ENOTSUP


_TYPES: Final = ("prefix", "ok", "bad", "unsupported", "map")
_SCOPES: Final = {"client": (True, False), "server": (False, True), "all": (True, True)}


@attrs.frozen
class Rule:
    """One rule, ``map`` already expanded: which sides it matches and what it does."""

    kind: str  # prefix, ok, bad, unsupported
    client: bool
    server: bool
    key: bytes
    prepend: bytes


@attrs.frozen
class XattrMap:
    """A parsed map; :meth:`to_host` and :meth:`to_guest` apply it."""

    rules: tuple[Rule, ...]

    def _client_rule(self, name: bytes) -> Rule | None:
        for rule in self.rules:
            if rule.client and name.startswith(rule.key):
                return rule
        return None

    def _server_rule(self, name: bytes) -> Rule | None:
        for rule in self.rules:
            if rule.server and name.startswith(rule.prepend):
                return rule
        return None

    def verdict(self, name: bytes) -> tuple[Verdict, bytes]:
        """The guest name ``name``'s verdict and, when it passes, its host name."""
        rule = self._client_rule(name)
        if rule is None or rule.kind == "bad":
            return Verdict.DENY, b""
        if rule.kind == "unsupported":
            return Verdict.UNSUPPORTED, b""
        if rule.kind == "prefix":
            return Verdict.PASS, rule.prepend + name
        return Verdict.PASS, name

    def to_host(self, name: bytes, *, getting: bool = False) -> bytes:
        """The host name for guest name ``name``, or ``OSError``: EPERM for a refused name
        (ENODATA when ``getting``: a GETXATTR of it finds nothing), ENOTSUP for an
        unsupported one."""
        verdict, host = self.verdict(name)
        if verdict is Verdict.PASS:
            return host
        if verdict is Verdict.UNSUPPORTED:
            raise OSError(errno.ENOTSUP, "xattr name not supported by the xattr map")
        if getting:
            raise OSError(errno.ENODATA, "xattr name refused by the xattr map")
        raise OSError(errno.EPERM, "xattr name refused by the xattr map")

    def to_guest(self, names: Iterable[bytes]) -> list[bytes]:
        """A host LISTXATTR as the guest sees it: renamed, hidden names left out."""
        out = []
        for name in names:
            rule = self._server_rule(name)
            if rule is None or rule.kind in ("bad", "unsupported"):
                continue
            out.append(name[len(rule.prepend) :] if rule.kind == "prefix" else name)
        return out

    def renames(self, name: bytes) -> bool:
        """Whether guest name ``name`` is stored under another name on the host (then the host
        kernel cannot drop it on write: ``security.capability``)."""
        verdict, host = self.verdict(name)
        return verdict is Verdict.PASS and host != name

    def terminated(self) -> bool:
        """Whether some rule matches every name on both sides (virtiofsd requires one)."""
        client = any(r.client and not r.key for r in self.rules)
        server = any(r.server and not r.prepend for r in self.rules)
        return client and server


def _fields(text: str, start: int, rule_no: int) -> tuple[list[str], int]:
    """The four delimited fields of a rule starting at ``text[start]`` (its delimiter), and
    where the rule ends. ``map`` rules have three fields; the caller tells."""
    delimiter = text[start]
    fields: list[str] = []
    pos = start + 1
    while True:
        end = text.find(delimiter, pos)
        if end < 0:
            raise XattrMapError(
                f"rule {rule_no}: {text[start:]!r} is not closed by its delimiter {delimiter!r}"
            )
        fields.append(text[pos:end])
        pos = end + 1
        if fields[0] not in _TYPES:
            raise XattrMapError(
                f"rule {rule_no}: type {fields[0]!r} is not one of {', '.join(_TYPES)}"
            )
        wanted = 3 if fields[0] == "map" else 4
        if len(fields) == wanted:
            return fields, pos


def parse_xattrmap(text: str) -> XattrMap:
    """Parse virtiofsd's xattr map syntax; :class:`XattrMapError` names the rule at fault."""
    rules: list[Rule] = []
    pos = 0
    rule_no = 0
    seen_map = False
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            break
        rule_no += 1
        if seen_map:
            raise XattrMapError(f"rule {rule_no}: nothing may follow the 'map' rule")
        fields, pos = _fields(text, pos, rule_no)
        kind = fields[0]
        if kind not in _TYPES:
            raise XattrMapError(f"rule {rule_no}: type {kind!r} is not one of {', '.join(_TYPES)}")
        try:
            encoded = [f.encode("utf-8", "surrogateescape") for f in fields[1:]]
        except UnicodeEncodeError as exc:  # pragma: no cover - surrogateescape round-trips
            raise XattrMapError(f"rule {rule_no}: {exc}") from None
        if any(b"\0" in f for f in encoded):
            raise XattrMapError(f"rule {rule_no}: a NUL byte in a name")
        if kind == "map":
            seen_map = True
            key, prepend = encoded
            rules.append(Rule("prefix", True, True, key, prepend))
            if key:
                rules.append(Rule("bad", True, True, prepend, key))
            rules.append(Rule("ok" if key else "bad", True, True, b"", b""))
            continue
        scope, key, prepend = fields[1], encoded[1], encoded[2]
        if scope not in _SCOPES:
            raise XattrMapError(
                f"rule {rule_no}: scope {scope!r} is not one of {', '.join(_SCOPES)}"
            )
        client, server = _SCOPES[scope]
        rules.append(Rule(kind, client, server, key, prepend))
    if not rules:
        raise XattrMapError("an xattr map needs at least one rule")
    return XattrMap(tuple(rules))
