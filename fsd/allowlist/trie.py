"""The path allowlist: a trie of share-relative paths with three access levels (pure).

Semantics follow crosvm's ``PathAllowlist`` (``devices/src/virtio/fs/allowlist.rs``):

* adding a path makes it FULL, and FULL is inherited by its whole subtree;
* every ancestor of an added path becomes TRAVERSE: the guest may look it up and list it, but
  the listing shows only children that lead to allowed paths, and nothing in it is writable;
* everything else is DENIED, including everything when nothing was added yet;
* only explicitly added paths can be removed; a removed path that still has added
  descendants stays TRAVERSE, and ancestors no longer leading anywhere are pruned.

Readers (the FUSE side, possibly on another thread) never lock: a batch is applied to
copy-on-write nodes and published with one attribute store, so every check sees either the
whole batch or none of it. Published nodes are never mutated again.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterable, Iterator
from collections.abc import Set as AbstractSet

from fsd.allowlist.paths import ROOT, SharePath, format_path


class Access(enum.IntEnum):
    """What the guest may do with a path; ordered, so ``>= TRAVERSE`` means visible."""

    DENIED = 0
    """Invisible: LOOKUP answers ENOENT, READDIR shows nothing."""
    TRAVERSE = 1
    """An ancestor of an allowed path: lookup and a filtered listing, never writable."""
    FULL = 2
    """An added path or anything below one: every operation."""


DENIED = Access.DENIED
TRAVERSE = Access.TRAVERSE
FULL = Access.FULL


class UpdateError(Exception):
    """A batch that cannot be applied; the allowlist is left exactly as it was."""


class _Node:
    """One path component. ``owner`` marks nodes that the running batch may still mutate."""

    __slots__ = ("children", "level", "owner")

    def __init__(self, level: Access, children: dict[str, _Node], owner: object) -> None:
        self.level = level
        self.children = children
        self.owner = owner


def _own(node: _Node, token: object) -> _Node:
    """Return a copy of ``node`` that this batch may mutate (the node itself if already one)."""
    if node.owner is token:
        return node
    return _Node(node.level, dict(node.children), token)


class Allowlist:
    """The set of share paths the guest may reach, with cheap per-request checks.

    ``Allowlist()`` is an enabled, empty allowlist: it denies everything until paths are added,
    as crosvm does once ``--allowlist-socket-path`` is given. ``Allowlist.allow_all()`` is the
    disabled allowlist used when no control socket is configured: every path is FULL and it
    cannot be changed.
    """

    __slots__ = ("_enabled", "_generation", "_root", "_write_lock")

    def __init__(self) -> None:
        self._enabled = True
        self._root = _Node(DENIED, {}, None)
        self._generation = 0
        self._write_lock = threading.Lock()

    @classmethod
    def allow_all(cls) -> Allowlist:
        """The disabled allowlist: everything is FULL, nothing is filtered, updates refused."""
        allowlist = cls()
        allowlist._enabled = False
        allowlist._root = _Node(FULL, {}, None)
        return allowlist

    @property
    def enabled(self) -> bool:
        """False for ``allow_all()``: lets callers skip checks entirely."""
        return self._enabled

    @property
    def generation(self) -> int:
        """Bumped by every applied batch, so callers can cache decisions per generation."""
        return self._generation

    # Checks: run per FUSE request, so they are plain loops over dict lookups.

    def access(self, path: SharePath) -> Access:
        """The access level of ``path`` (``()`` is the share root)."""
        node = self._root
        if node.level is FULL:
            return FULL
        for name in path:
            child = node.children.get(name)
            if child is None:
                return DENIED
            if child.level is FULL:
                return FULL
            node = child
        return node.level

    def child_access(self, parent: SharePath, name: str) -> Access:
        """The access level of entry ``name`` in directory ``parent``, without building a tuple."""
        node = self._root
        if node.level is FULL:
            return FULL
        for component in parent:
            child = node.children.get(component)
            if child is None:
                return DENIED
            if child.level is FULL:
                return FULL
            node = child
        child = node.children.get(name)
        return DENIED if child is None else child.level

    def visible_children(self, directory: SharePath) -> AbstractSet[str] | None:
        """Which entries of ``directory`` a listing may show: ``None`` means all of them.

        A TRAVERSE directory shows only the names leading to allowed paths, a DENIED one shows
        none (an empty set). The returned set is a read-only view that never changes.
        """
        node = self._root
        if node.level is FULL:
            return None
        for name in directory:
            child = node.children.get(name)
            if child is None:
                return frozenset()
            if child.level is FULL:
                return None
            node = child
        return node.children.keys()

    def explicit_paths(self) -> list[SharePath]:
        """The added paths, sorted; ``[()]`` (the whole share) for the disabled allowlist."""
        return sorted(_explicit(self._root, ROOT))

    # Updates: atomic batches, built on copies and published with one store.

    def add(self, paths: Iterable[SharePath]) -> None:
        """Make every path FULL (and its ancestors TRAVERSE); re-adding is a no-op."""
        with self._write_lock:
            self._refuse_if_disabled()
            token = object()
            root = _own(self._root, token)
            for path in paths:
                node = root
                for name in path:
                    child = node.children.get(name)
                    child = _Node(TRAVERSE, {}, token) if child is None else _own(child, token)
                    node.children[name] = child
                    node = child
                node.level = FULL
            self._publish(root)

    def remove(self, paths: Iterable[SharePath]) -> None:
        """Remove explicitly added paths, all or none; raises ``UpdateError`` naming the culprit.

        As in crosvm, removing a path that was never added, one that is only reachable as an
        ancestor (TRAVERSE) or only inherited from an added ancestor, or the same path twice in
        one batch is an error, and the whole batch is then discarded.
        """
        with self._write_lock:
            self._refuse_if_disabled()
            token = object()
            root = _own(self._root, token)
            for path in paths:
                chain = [root]
                for name in path:
                    child = chain[-1].children.get(name)
                    if child is None:
                        break
                    chain.append(child)
                if len(chain) != len(path) + 1 or chain[-1].level is not FULL:
                    raise UpdateError(f"{format_path(path)} is not an added path")
                for depth, name in enumerate(path):
                    owned = _own(chain[depth + 1], token)
                    chain[depth].children[name] = owned
                    chain[depth + 1] = owned
                chain[-1].level = TRAVERSE
                for depth in range(len(path), 0, -1):
                    node = chain[depth]
                    if node.level is FULL or node.children:
                        break
                    del chain[depth - 1].children[path[depth - 1]]
            self._publish(root)

    def _refuse_if_disabled(self) -> None:
        if not self._enabled:
            raise UpdateError("the allowlist is disabled (no allowlist socket configured)")

    def _publish(self, root: _Node) -> None:
        if root.level is not FULL:
            root.level = TRAVERSE if root.children else DENIED
        self._root = root
        self._generation += 1

    def __repr__(self) -> str:
        if not self._enabled:
            return "Allowlist.allow_all()"
        paths = ", ".join(repr(format_path(p)) for p in self.explicit_paths())
        return f"<Allowlist [{paths}]>"


def _explicit(node: _Node, path: SharePath) -> Iterator[SharePath]:
    """Every explicitly added path under ``node``, depth first. Iterative: a client may add
    a path thousands of components deep, deeper than Python's recursion limit."""
    stack = [(node, path)]
    while stack:
        node, path = stack.pop()
        if node.level is FULL:
            yield path
        stack.extend((child, (*path, name)) for name, child in reversed(node.children.items()))
