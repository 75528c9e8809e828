"""The allowlist gate: which names the guest may see, create, remove or change.

The passthrough asks its gate before every operation that could reach a path the dynamic
path allowlist (crosvm's) hides or protects; the gate raises the errno crosvm answers with.
Without an allowlist the filesystem gets :class:`OpenGate`, whose checks do nothing, so an
unrestricted share pays one no-op call and nothing else. One mechanism, one module: the
passthrough never looks at the allowlist itself.

| check | used by | denied |
|---|---|---|
| ``visible`` | LOOKUP, READDIRPLUS entries | ENOENT (:class:`HiddenByAllowlist`: never cached) |
| ``writable`` | CREATE, MKDIR, MKNOD, SYMLINK, LINK, UNLINK, RMDIR, RENAME, TMPFILE | EACCES |
| ``changeable`` | SETATTR, SETXATTR, REMOVEXATTR | EACCES |
| ``listing`` | READDIR(PLUS) snapshots and their re-filtering after a change | names left out |
"""

from __future__ import annotations

import errno
import os
from collections.abc import Set as AbstractSet

from fsd.allowlist.trie import DENIED, FULL, TRAVERSE, Allowlist
from fsd.fs.inodes import Inode
from fsd.fuse.errors import HiddenByAllowlist

__all__ = ["AllowlistGate", "Gate", "OpenGate", "gate_for"]


class OpenGate:
    """No allowlist: every name is visible and writable."""

    __slots__ = ()

    @property
    def generation(self) -> int:
        """Bumped by every allowlist change: a listing taken at another one is refiltered."""
        return 0

    def visible(self, parent: Inode, name: bytes) -> None:
        """LOOKUP of ``name`` in ``parent``."""

    def visible_path(self, path: bytes) -> None:
        """LOOKUP of ``.``/``..`` resolved to ``path`` (share-relative)."""

    def writable(self, parent: Inode, name: bytes) -> None:
        """``name`` in ``parent`` may appear or disappear."""

    def writable_dir(self, directory: Inode) -> None:
        """An unnamed file may appear in ``directory`` (O_TMPFILE)."""

    def changeable(self, inode: Inode, *, is_root: bool) -> None:
        """The inode's attributes or xattrs may change."""

    def listing(self, directory: Inode) -> AbstractSet[str] | None:
        """The names of ``directory`` the guest may list; ``None``: all of them."""
        return None


class AllowlistGate(OpenGate):
    """The dynamic path allowlist, with crosvm's semantics (docs/allowlist.md)."""

    __slots__ = ("allowlist",)

    def __init__(self, allowlist: Allowlist) -> None:
        self.allowlist = allowlist

    @property
    def generation(self) -> int:
        return self.allowlist.generation

    def visible(self, parent: Inode, name: bytes) -> None:
        if self.allowlist.child_access(parent.share_path(), os.fsdecode(name)) is DENIED:
            raise HiddenByAllowlist(errno.ENOENT, "hidden by the allowlist")

    def visible_path(self, path: bytes) -> None:
        if path and self.allowlist.access(_share_path(path)) is DENIED:
            raise HiddenByAllowlist(errno.ENOENT, "hidden by the allowlist")

    def writable(self, parent: Inode, name: bytes) -> None:
        # Only a FULL place may gain or lose an entry.
        if self.allowlist.child_access(parent.share_path(), os.fsdecode(name)) is not FULL:
            raise OSError(errno.EACCES, "not writable under the allowlist")

    def writable_dir(self, directory: Inode) -> None:
        if self.allowlist.access(directory.share_path()) is not FULL:
            raise OSError(errno.EACCES, "not writable under the allowlist")

    def changeable(self, inode: Inode, *, is_root: bool) -> None:
        # Not on passage-only ancestors of allowed paths (crosvm leaves this open), nor on the
        # share root unless it is FULL (an empty allowlist denies it). Other inodes held
        # while their path was revoked keep working, as in crosvm.
        access = self.allowlist.access(inode.share_path())
        if access is TRAVERSE or (access is not FULL and is_root):
            raise OSError(errno.EACCES, "not writable under the allowlist")

    def listing(self, directory: Inode) -> AbstractSet[str] | None:
        return self.allowlist.visible_children(directory.share_path())


Gate = OpenGate
"""The type of every gate (:class:`AllowlistGate` is an :class:`OpenGate` that checks)."""


def gate_for(allowlist: Allowlist | None) -> OpenGate:
    """The gate an allowlist asks for: none (or one that allows all) opens everything."""
    if allowlist is None or not allowlist.enabled:
        return OpenGate()
    return AllowlistGate(allowlist)


def _share_path(path: bytes) -> tuple[str, ...]:
    """A share-relative bytes path as the allowlist's name tuple."""
    return tuple(os.fsdecode(path).split("/")) if path else ()
