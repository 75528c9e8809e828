"""Lexical normalization of share-relative allowlist paths (pure, no I/O).

Allowlist paths name places inside the shared directory, written from its root (``/foo/bar``
means ``<shared-dir>/foo/bar``). The check is purely lexical, as in crosvm: the host filesystem
is never consulted, so a path may name something that does not exist yet (the guest may create
it later). A normalized path is a tuple of name components; ``()`` is the share root. Tuples
make the per-request trie walk a few dict lookups with no string splitting.
"""

from __future__ import annotations

from typing import TypeAlias

SharePath: TypeAlias = tuple[str, ...]
"""A normalized share-relative path: its name components, ``()`` for the share root."""

ROOT: SharePath = ()


class InvalidPathError(ValueError):
    """A path that cannot name anything inside the share; the message says why."""


def normalize(path: str) -> SharePath:
    """Resolve ``.``, ``..``, ``//`` and trailing slashes without touching the filesystem.

    Stricter than crosvm in three ways, each of which only refuses input that crosvm would
    silently reinterpret: the path must start with ``/`` (crosvm turns ``""`` into the whole
    share and ``a/b`` into ``/a/b``), it may not contain NUL (no real name can), and it must be
    valid Unicode text without lone surrogates (serde_json refuses those too). Like crosvm, a
    ``..`` that would climb above the share root makes the path invalid.
    """
    if not path.startswith("/"):
        raise InvalidPathError(f"path must start with '/' (relative to the share root): {path!r}")
    if "\0" in path:
        raise InvalidPathError(f"path contains a NUL character: {path!r}")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidPathError(f"path is not valid Unicode (lone surrogate): {path!r}") from None
    names: list[str] = []
    for name in path.split("/"):
        if name in ("", "."):
            continue
        if name == "..":
            if not names:
                raise InvalidPathError(f"path climbs above the share root: {path!r}")
            names.pop()
            continue
        names.append(name)
    return tuple(names)


def format_path(path: SharePath) -> str:
    """Write a normalized path the way clients send it: ``/`` then names joined by ``/``."""
    return "/" + "/".join(path)
