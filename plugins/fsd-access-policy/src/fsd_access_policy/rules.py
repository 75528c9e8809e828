"""Access rules from TOML, and the decision for one request (pure: no I/O, no clock).

::

    read_only = ["/etc", "/archive"]        # nothing under these may change     -> EROFS
    deny = ["/secret", "*.key", "*/.ssh"]   # these paths and everything below   -> EACCES
    write_allowed = ["/scratch"]            # if set, changes only under these   -> EROFS

    [[uid]]                                 # extra rules for one guest uid
    uid = 1000
    read_only = true                        # this uid changes nothing anywhere  -> EROFS
    deny = ["/admin"]

    [rate.write]                            # token bucket per operation class   -> EAGAIN
    per_second = 200
    burst = 400

Paths are share-relative with a leading ``/``. Globs use ``fnmatch`` (``*`` also matches
``/``) and are tried against the path and each of its parents, so a denied directory denies
its subtree. Unknown keys are errors: a typo must not silently weaken a policy.

Rules match paths, not inodes, so renaming an ancestor would carry a protected subtree out
from under its rule (``mv /data /moved``, then write ``/moved/ro/f``). Hence RENAME, RENAME2
and RMDIR are denied when a protected root lies at or below their source or destination:
each ``read_only`` root (EROFS), and each ``deny`` pattern's literal directory prefix
(EACCES): the whole pattern when it has no wildcard, ``/data`` for ``/data/*.key``. A
pattern starting with a wildcard (``*.key``, ``*/.ssh``) matches wherever the name goes, so
it needs no guard; one whose wildcard comes in the first component (``/da*/x``) cannot be
guarded and does not follow a renamed subtree. ``write_allowed`` needs no guard: every
ancestor of a writable root is outside it, so renaming one is already denied.
"""

from __future__ import annotations

import dataclasses
import errno
import fnmatch
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from fsd.fuse.abi import Opcode
from fsd.hookinfo import OP_CLASSES, FuseRequestInfo

__all__ = ["Decision", "PolicyError", "RateSpec", "Rules", "UidRules", "parse_rules"]

_TOP_KEYS: Final = {"read_only", "deny", "write_allowed", "uid", "rate"}
_UID_KEYS: Final = {"uid", "read_only", "deny", "write_allowed"}
#: Operations that move or remove a directory, and so every path below it.
_SUBTREE_OPS: Final = frozenset({int(Opcode.RENAME), int(Opcode.RENAME2), int(Opcode.RMDIR)})
_WILDCARDS: Final = re.compile(r"[*?\[]")


class PolicyError(ValueError):
    """The rules file is invalid; the message says where."""


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """A denial: the errno for the guest and the reason for the log."""

    errno: int
    reason: str


def _ancestors(path: str) -> Iterable[str]:
    """``"/a/b/c"`` → ``"/a"``, ``"/a/b"``, ``"/a/b/c"`` (``"/"`` for the root)."""
    if path == "/":
        yield "/"
        return
    end = path.find("/", 1)
    while end != -1:
        yield path[:end]
        end = path.find("/", end + 1)
    yield path


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(root == "/" or path == root or path.startswith(root + "/") for root in roots)


def _holds(path: str, roots: tuple[str, ...]) -> str | None:
    """The first root at or below ``path`` (``path`` is it or one of its ancestors)."""
    for root in roots:
        if path == "/" or root == path or root.startswith(path + "/"):
            return root
    return None


def _guards(patterns: Iterable[str]) -> tuple[str, ...]:
    """The literal directory prefix of each deny pattern, which renames must not move."""
    out = []
    for pattern in patterns:
        wildcard = _WILDCARDS.search(pattern)
        end = len(pattern) if wildcard is None else pattern.rfind("/", 0, wildcard.start())
        if end > 0 and pattern.startswith("/"):
            out.append(pattern[:end])
    return tuple(out)


def _paths(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{where}: expected a list of strings")
    for v in value:
        if not v.startswith("/"):
            raise PolicyError(f"{where}: {v!r} must start with '/'")
    return tuple(v.rstrip("/") or "/" for v in value)


def _globs(value: Any, where: str) -> tuple[re.Pattern[str] | None, tuple[str, ...]]:
    """The compiled patterns, and their guards (see the module docstring)."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"{where}: expected a list of non-empty strings")
    patterns = [v.rstrip("/") or "/" for v in value]
    if not patterns:
        return None, ()
    return re.compile("|".join(fnmatch.translate(p) for p in patterns)), _guards(patterns)


@dataclasses.dataclass(frozen=True, slots=True)
class UidRules:
    """Rules that apply to one guest uid on top of the global ones."""

    read_only: bool = False
    deny: re.Pattern[str] | None = None
    write_allowed: tuple[str, ...] | None = None
    deny_guards: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class RateSpec:
    """A token bucket: ``per_second`` refill, ``burst`` capacity."""

    per_second: float
    burst: float


@dataclasses.dataclass(frozen=True, slots=True)
class Rules:
    """A parsed policy; :meth:`decide` is the whole check except rate limits."""

    read_only: tuple[str, ...] = ()
    deny: re.Pattern[str] | None = None
    write_allowed: tuple[str, ...] | None = None
    uids: Mapping[int, UidRules] = dataclasses.field(default_factory=dict)
    rates: Mapping[str, RateSpec] = dataclasses.field(default_factory=dict)
    #: Literal directory prefixes of ``deny``, which no rename or rmdir may move.
    deny_guards: tuple[str, ...] = ()

    def denied_path(self, path: str, uid: int | None = None) -> bool:
        """Whether a glob denies ``path`` (or one of its parents) globally or for ``uid``."""
        patterns = [self.deny]
        if uid is not None and uid in self.uids:
            patterns.append(self.uids[uid].deny)
        active = [p for p in patterns if p is not None]
        return bool(active) and any(p.match(a) for a in _ancestors(path) for p in active)

    def decide(self, request: FuseRequestInfo) -> Decision | None:
        """The denial for ``request``, or None when these rules allow it."""
        paths = request.paths()
        extra = self.uids.get(request.uid)
        for path in paths:
            if self.denied_path(path, request.uid):
                return Decision(errno.EACCES, f"{path} is denied")
        if not request.writes:
            return None
        if extra is not None and extra.read_only:
            return Decision(errno.EROFS, f"uid {request.uid} is read-only")
        for path in paths:
            if _under(path, self.read_only):
                return Decision(errno.EROFS, f"{path} is in a read-only subtree")
            for allowed in (self.write_allowed, extra.write_allowed if extra else None):
                if allowed is not None and not _under(path, allowed):
                    return Decision(errno.EROFS, f"{path} is outside the writable paths")
        if request.opcode in _SUBTREE_OPS:
            return self._moves_protected(paths, extra)
        return None

    def _moves_protected(self, paths: tuple[str, ...], extra: UidRules | None) -> Decision | None:
        """Deny moving or removing a directory that holds a protected root (see the module)."""
        denied = self.deny_guards + (extra.deny_guards if extra else ())
        for path in paths:
            root = _holds(path, self.read_only)
            if root is not None:
                return Decision(errno.EROFS, f"{path} holds the read-only subtree {root}")
            root = _holds(path, denied)
            if root is not None:
                return Decision(errno.EACCES, f"{path} holds the denied path {root}")
        return None


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")


def parse_rules(doc: Mapping[str, Any]) -> Rules:
    """Validate a parsed TOML document and build :class:`Rules`; raise :class:`PolicyError`."""
    _check_keys(doc, _TOP_KEYS, "policy")
    uids: dict[int, UidRules] = {}
    for index, table in enumerate(doc.get("uid", [])):
        where = f"uid[{index}]"
        if not isinstance(table, dict):
            raise PolicyError(f"{where}: expected a table ([[uid]])")
        _check_keys(table, _UID_KEYS, where)
        uid = table.get("uid")
        if not isinstance(uid, int) or isinstance(uid, bool) or uid < 0:
            raise PolicyError(f"{where}.uid: expected a non-negative integer")
        read_only = table.get("read_only", False)
        if not isinstance(read_only, bool):
            raise PolicyError(f"{where}.read_only: expected true or false")
        allowed = table.get("write_allowed")
        deny, guards = _globs(table.get("deny", []), f"{where}.deny")
        uids[uid] = UidRules(
            read_only,
            deny,
            None if allowed is None else _paths(allowed, f"{where}.write_allowed"),
            guards,
        )
    rates: dict[str, RateSpec] = {}
    rate_table = doc.get("rate", {})
    if not isinstance(rate_table, dict):
        raise PolicyError("rate: expected a table")
    for name, spec in rate_table.items():
        where = f"rate.{name}"
        if name not in OP_CLASSES or name == "allowlist":
            raise PolicyError(f"{where}: unknown operation class")
        if not isinstance(spec, dict):
            raise PolicyError(f"{where}: expected a table")
        _check_keys(spec, {"per_second", "burst"}, where)
        per_second = spec.get("per_second")
        if not isinstance(per_second, int | float) or isinstance(per_second, bool):
            raise PolicyError(f"{where}.per_second: expected a number")
        burst = spec.get("burst", per_second)
        if not isinstance(burst, int | float) or isinstance(burst, bool) or burst < 1:
            raise PolicyError(f"{where}.burst: expected a number >= 1")
        if per_second <= 0:
            raise PolicyError(f"{where}.per_second: must be positive")
        rates[name] = RateSpec(float(per_second), float(burst))
    allowed = doc.get("write_allowed")
    deny, guards = _globs(doc.get("deny", []), "deny")
    return Rules(
        read_only=_paths(doc.get("read_only", []), "read_only"),
        deny=deny,
        write_allowed=None if allowed is None else _paths(allowed, "write_allowed"),
        uids=uids,
        rates=rates,
        deny_guards=guards,
    )
