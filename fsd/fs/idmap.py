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
"""

from __future__ import annotations

import bisect
import itertools
from typing import Final

import attrs

__all__ = ["IDENTITY", "OVERFLOW_ID", "IdMap", "IdMaps", "parse_id_maps", "parse_idmap"]

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


@attrs.frozen
class IdMaps:
    """The uid and gid maps a filesystem applies (one of them may be :data:`IDENTITY`)."""

    uid: IdMap = IDENTITY
    gid: IdMap = IDENTITY


def parse_idmap(text: str) -> IdMap:
    """Parse crosvm/minijail's ``"inner outer count[,inner outer count...]"``.

    Extents are separated by commas (minijail turns each into one ``uid_map`` line); the
    three numbers by whitespace. Anything else raises :class:`ValueError` naming the problem.
    """
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
    return IdMap(tuple(extents))


def parse_id_maps(uid_map: str | None, gid_map: str | None) -> IdMaps | None:
    """The ``--uid-map``/``--gid-map`` flags as :class:`IdMaps`; ``None`` (no translation at
    all) when neither is given. Errors name the flag."""
    if uid_map is None and gid_map is None:
        return None
    maps = {}
    for flag, text in (("uid", uid_map), ("gid", gid_map)):
        if text is not None:
            try:
                maps[flag] = parse_idmap(text)
            except ValueError as exc:
                raise ValueError(f"--{flag}-map {text!r}: {exc}") from None
    return IdMaps(**maps)
