"""Guest↔host id maps (``--uid-map``/``--gid-map``), parsed and applied without any I/O.

crosvm hands these strings to minijail, which writes them into a user namespace's
``uid_map``/``gid_map``: ``"inner outer count[,inner outer count...]"``, where *inner* ids are
the guest's and *outer* ids the host's. fsd has no user namespace; it translates ids itself,
with the kernel's rules so that a map means the same thing as under crosvm:

* extents may not overlap on either side (the map must be a bijection), a count is at least
  1, and no extent reaches id 4294967295 (``(uid_t) -1`` is never mapped); at most 340
  extents (``UID_GID_MAP_MAX_EXTENTS``);
* a host id outside the map shows in the guest as the overflow id 65534, like an unmapped
  owner inside a user namespace;
* a guest id outside the map has no host id: :meth:`IdMap.to_host` returns ``None`` and the
  caller decides (the filesystem refuses creates with EOVERFLOW and chown with EINVAL, as
  the kernel does).

virtiofsd writes the same extents as ``:inner:outer:count:`` (``--uid-map``, repeatable; the
first character is the delimiter, and the last must repeat it): :func:`parse_idmap` takes
both, the leading delimiter tells them apart. virtiofsd's other vocabulary,
``--translate-uid TYPE:...``, is a different kind of map (one per direction, unmapped ids
pass unchanged): :class:`TranslationMap`, parsed by :func:`parse_translations`.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from typing import Final, Protocol

import attrs

__all__ = [
    "IDENTITY",
    "OVERFLOW_ID",
    "IdMap",
    "IdMaps",
    "IdTranslation",
    "TranslationMap",
    "parse_id_maps",
    "parse_idmap",
    "parse_translations",
]

#: What an unmapped host id shows as (``/proc/sys/kernel/overflowuid``'s default).
OVERFLOW_ID: Final = 65534
#: One past the largest mappable id: ``(uid_t) -1`` is never mapped.
_ID_LIMIT: Final = 0xFFFFFFFF
_MAX_EXTENTS: Final = 340


@attrs.frozen
class Extent:
    """``count`` consecutive ids: guest ``inner..`` are host ``outer..``."""

    inner: int
    outer: int
    count: int


def _lookup(starts: list[int], extents: tuple[Extent, ...], other: list[int], ident: int) -> int:
    """The other side's id for ``ident`` via sorted ``starts``; -1 if no extent holds it."""
    i = bisect.bisect_right(starts, ident) - 1
    if i >= 0:
        ext = extents[i]
        offset = ident - starts[i]
        if offset < ext.count:
            return other[i] + offset
    return -1


@attrs.frozen
class IdMap:
    """One id map (uids or gids) with lookups in both directions, O(log extents) each."""

    #: As given (``str()`` gives it back); equality compares the mapping, not the order.
    extents: tuple[Extent, ...] = attrs.field(eq=False)
    _by_inner: tuple[Extent, ...] = attrs.field(init=False)
    _inner_starts: list[int] = attrs.field(init=False, eq=False)
    _inner_outers: list[int] = attrs.field(init=False, eq=False)
    _by_outer: tuple[Extent, ...] = attrs.field(init=False)
    _outer_starts: list[int] = attrs.field(init=False, eq=False)
    _outer_inners: list[int] = attrs.field(init=False, eq=False)

    def __attrs_post_init__(self) -> None:
        _check(self.extents)
        by_inner = tuple(sorted(self.extents, key=lambda e: e.inner))
        by_outer = tuple(sorted(self.extents, key=lambda e: e.outer))
        set_ = object.__setattr__
        set_(self, "_by_inner", by_inner)
        set_(self, "_inner_starts", [e.inner for e in by_inner])
        set_(self, "_inner_outers", [e.outer for e in by_inner])
        set_(self, "_by_outer", by_outer)
        set_(self, "_outer_starts", [e.outer for e in by_outer])
        set_(self, "_outer_inners", [e.inner for e in by_outer])

    def to_host(self, guest_id: int) -> int | None:
        """The host id for a guest id, or ``None`` when the map does not cover it."""
        host = _lookup(self._inner_starts, self._by_inner, self._inner_outers, guest_id)
        return None if host < 0 else host

    def to_guest(self, host_id: int) -> int:
        """The guest id for a host id; :data:`OVERFLOW_ID` when the map does not cover it."""
        guest = _lookup(self._outer_starts, self._by_outer, self._outer_inners, host_id)
        return OVERFLOW_ID if guest < 0 else guest

    def __str__(self) -> str:
        return ",".join(f"{e.inner} {e.outer} {e.count}" for e in self.extents)


def _check(extents: tuple[Extent, ...]) -> None:
    if not extents:
        raise ValueError("an id map needs at least one 'inner outer count' extent")
    if len(extents) > _MAX_EXTENTS:
        raise ValueError(f"an id map has at most {_MAX_EXTENTS} extents, not {len(extents)}")
    for ext in extents:
        if ext.count < 1:
            raise ValueError(f"extent '{ext.inner} {ext.outer} {ext.count}': count must be >= 1")
        for side, start in (("inner", ext.inner), ("outer", ext.outer)):
            if start < 0 or start + ext.count > _ID_LIMIT:
                raise ValueError(
                    f"extent '{ext.inner} {ext.outer} {ext.count}': {side} ids "
                    f"{start}..{start + ext.count - 1} leave 0..{_ID_LIMIT - 1}"
                )
    for side in ("inner", "outer"):
        ordered = sorted(extents, key=lambda e: getattr(e, side))
        for a, b in itertools.pairwise(ordered):
            if getattr(a, side) + a.count > getattr(b, side):
                raise ValueError(
                    f"extents '{a.inner} {a.outer} {a.count}' and '{b.inner} {b.outer} "
                    f"{b.count}' overlap on the {side} ({'guest' if side == 'inner' else 'host'})"
                    " side"
                )


#: Every id maps to itself: the map used for the kind (uid or gid) that was not given.
IDENTITY: Final = IdMap((Extent(0, 0, _ID_LIMIT),))


class IdTranslation(Protocol):
    """What the filesystem asks of an id map, whichever syntax made it."""

    def to_host(self, guest_id: int) -> int | None:
        """The host id a guest id acts as; ``None``: it has none (refused)."""
        ...

    def to_guest(self, host_id: int) -> int:
        """The id the guest sees for a host id."""
        ...


@attrs.frozen
class IdMaps:
    """The uid and gid maps a filesystem applies (one of them may be :data:`IDENTITY`)."""

    uid: IdTranslation = IDENTITY
    gid: IdTranslation = IDENTITY


def parse_idmap(text: str) -> IdMap:
    """Parse crosvm/minijail's ``"inner outer count[,inner outer count...]"`` or virtiofsd's
    ``":inner:outer:count:"`` (any non-alphanumeric delimiter, repeated at the end).

    crosvm's extents are separated by commas (minijail turns each into one ``uid_map`` line);
    the three numbers by whitespace. Anything else raises :class:`ValueError` naming the
    problem.
    """
    return IdMap(tuple(_extents(text)))


def _extents(text: str) -> list[Extent]:
    """The extents of one map argument, in either syntax."""
    first = text[:1]
    delimited = first == ":" or (len(text) > 1 and text.endswith(first))
    if first and not first.isalnum() and not first.isspace() and delimited:
        return [_virtiofsd_extent(text)]
    if not text.strip():
        raise ValueError("an id map cannot be empty: expected 'inner outer count[,...]'")
    extents = []
    for item in text.split(","):
        fields = item.split()
        if len(fields) != 3:
            raise ValueError(
                f"bad id map extent {item.strip()!r}: expected 'inner outer count' "
                "(extents are separated by commas)"
            )
        if not all(f.isascii() and f.isdigit() for f in fields):
            raise ValueError(f"bad id map extent {item.strip()!r}: ids must be decimal numbers")
        inner, outer, count = (int(f) for f in fields)
        extents.append(Extent(inner, outer, count))
    return extents


def _virtiofsd_extent(text: str) -> Extent:
    """virtiofsd's ``:inner:outer:count:`` (``--uid-map=:0:1000:1:``)."""
    delimiter = text[0]
    if len(text) < 2 or text[-1] != delimiter:
        raise ValueError(
            f"bad id map {text!r}: expected {delimiter}inner{delimiter}outer{delimiter}count"
            f"{delimiter} (virtiofsd's syntax ends with the delimiter it starts with)"
        )
    fields = text[1:-1].split(delimiter)
    if len(fields) != 3:
        raise ValueError(
            f"bad id map {text!r}: expected 3 numbers (inner, outer, count), not {len(fields)}"
        )
    if not all(f.isascii() and f.isdigit() for f in fields):
        raise ValueError(f"bad id map {text!r}: ids must be decimal numbers")
    inner, outer, count = (int(f) for f in fields)
    return Extent(inner, outer, count)


def parse_id_maps(
    uid_map: str | Sequence[str] | None, gid_map: str | Sequence[str] | None
) -> IdMaps | None:
    """The ``--uid-map``/``--gid-map`` flags as :class:`IdMaps`; ``None`` (no translation at
    all) when neither is given. Each flag may be given several times (virtiofsd's form takes
    one extent per flag); the extents of all of them make one map. Errors name the flag."""
    if not uid_map and not gid_map:
        return None
    maps: dict[str, IdTranslation] = {}
    for flag, given in (("uid", uid_map), ("gid", gid_map)):
        if not given:
            continue
        texts = [given] if isinstance(given, str) else list(given)
        extents: list[Extent] = []
        for text in texts:
            try:
                extents.extend(_extents(text))
            except ValueError as exc:
                raise ValueError(f"--{flag}-map {text!r}: {exc}") from None
        try:
            maps[flag] = IdMap(tuple(extents))
        except ValueError as exc:
            raise ValueError(f"--{flag}-map {' '.join(map(repr, texts))}: {exc}") from None
    return IdMaps(**maps)


# --- virtiofsd's --translate-uid/--translate-gid --------------------------------------------


@attrs.frozen
class _Range:
    """``count`` source ids from ``start``: to ``target`` + offset, or all to ``target``
    (``squash``), or to none (``target`` -1: forbidden)."""

    start: int
    count: int
    target: int
    squash: bool = False

    def apply(self, ident: int) -> int:
        if self.target < 0:
            return -1
        return self.target if self.squash else self.target + (ident - self.start)


class _RangeMap:
    """Non-overlapping source ranges, looked up by bisection; unmapped ids map to themselves."""

    __slots__ = ("_ranges", "_starts")

    def __init__(self, ranges: list[_Range], direction: str) -> None:
        ordered = sorted(ranges, key=lambda r: r.start)
        for a, b in itertools.pairwise(ordered):
            if a.start + a.count > b.start:
                raise ValueError(
                    f"{direction} ranges {a.start}..{a.start + a.count - 1} and "
                    f"{b.start}..{b.start + b.count - 1} overlap"
                )
        self._ranges = tuple(ordered)
        self._starts = [r.start for r in ordered]

    def lookup(self, ident: int) -> int:
        i = bisect.bisect_right(self._starts, ident) - 1
        if i >= 0:
            found = self._ranges[i]
            if ident - found.start < found.count:
                return found.apply(ident)
        return ident


class TranslationMap:
    """virtiofsd's ``--translate-uid``/``--translate-gid``: a guest→host and a host→guest map,
    independent of each other (not a bijection), ids outside them unchanged.

    ``guest:G:H:N`` maps guest G.. to host H.. (one way), ``host:H:G:N`` host to guest,
    ``map:G:H:N`` both ways, ``squash-guest:G:H:N`` all N guest ids to host H,
    ``squash-host:H:G:N`` all N host ids to guest G, ``forbid-guest:G:N`` makes N guest ids
    unusable: :meth:`to_host` returns ``None``, so creating files as them or giving files
    those owners is refused (EOVERFLOW, EINVAL; virtiofsd answers EIO there).
    """

    __slots__ = ("_to_guest", "_to_host", "rules")

    def __init__(self, rules: Sequence[str]) -> None:
        to_host: list[_Range] = []
        to_guest: list[_Range] = []
        for rule in rules:
            kind, numbers = _translation_fields(rule)
            if kind == "forbid-guest":
                to_host.append(_Range(numbers[0], numbers[1], -1))
                continue
            source, target, count = numbers
            if kind in ("guest", "map"):
                to_host.append(_Range(source, count, target))
            if kind == "map":
                to_guest.append(_Range(target, count, source))
            elif kind == "host":
                to_guest.append(_Range(source, count, target))
            elif kind == "squash-guest":
                to_host.append(_Range(source, count, target, squash=True))
            elif kind == "squash-host":
                to_guest.append(_Range(source, count, target, squash=True))
        self.rules = tuple(rules)
        self._to_host = _RangeMap(to_host, "guest-to-host")
        self._to_guest = _RangeMap(to_guest, "host-to-guest")

    def to_host(self, guest_id: int) -> int | None:
        host = self._to_host.lookup(guest_id)
        return None if host < 0 else host

    def to_guest(self, host_id: int) -> int:
        return self._to_guest.lookup(host_id)

    def __str__(self) -> str:
        return " ".join(self.rules)


_TRANSLATION_ARITY: Final = {
    "guest": 3,
    "host": 3,
    "map": 3,
    "squash-guest": 3,
    "squash-host": 3,
    "forbid-guest": 2,
}


def _translation_fields(rule: str) -> tuple[str, list[int]]:
    """``TYPE<sep>a<sep>b[<sep>c]``: the type (lower-cased) and its numbers, checked."""
    i = 0
    while i < len(rule) and (rule[i].isalnum() or rule[i] in "-_"):
        i += 1
    kind = rule[:i].lower()
    if kind not in _TRANSLATION_ARITY:
        raise ValueError(
            f"{rule!r}: unknown type {kind!r} (expected one of {', '.join(_TRANSLATION_ARITY)})"
        )
    if i == len(rule):
        raise ValueError(f"{rule!r}: expected {kind}:numbers...")
    fields = rule[i + 1 :].split(rule[i])
    if len(fields) != _TRANSLATION_ARITY[kind]:
        raise ValueError(
            f"{rule!r}: {kind} takes {_TRANSLATION_ARITY[kind]} numbers, not {len(fields)}"
        )
    if not all(f.isascii() and f.isdigit() for f in fields):
        raise ValueError(f"{rule!r}: ids must be decimal numbers")
    numbers = [int(f) for f in fields]
    count = numbers[-1]
    starts = numbers[:1] if kind == "forbid-guest" or kind.startswith("squash") else numbers[:2]
    if count < 1:
        raise ValueError(f"{rule!r}: the count must be at least 1")
    for start in starts:
        if start + count > _ID_LIMIT:
            raise ValueError(f"{rule!r}: the range leaves 0..{_ID_LIMIT - 1}")
    if kind.startswith("squash") and numbers[1] >= _ID_LIMIT:
        raise ValueError(f"{rule!r}: the target id leaves 0..{_ID_LIMIT - 1}")
    return kind, numbers


def parse_translations(translate_uid: Sequence[str], translate_gid: Sequence[str]) -> IdMaps | None:
    """``--translate-uid``/``--translate-gid`` (each repeatable) as :class:`IdMaps`; ``None``
    when neither is given. Errors name the flag."""
    if not translate_uid and not translate_gid:
        return None
    maps: dict[str, IdTranslation] = {}
    for flag, rules in (("uid", translate_uid), ("gid", translate_gid)):
        if rules:
            try:
                maps[flag] = TranslationMap(rules)
            except ValueError as exc:
                raise ValueError(f"--translate-{flag}: {exc}") from None
    return IdMaps(**maps)
