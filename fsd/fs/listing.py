"""Directory listings: one snapshot per open directory, paged through by cookie.

The whole directory is read into the snapshot at the first READDIR from offset 0, so the
offset the guest sends back is an index into it: a large directory lists completely and
exactly once across many READDIR calls even while it changes, and names hidden by the
allowlist never make a batch look like the end of the directory (crosvm filters one getdents
batch and can end early). A name hidden after the snapshot becomes ``None``, keeping every
later cookie.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Set as AbstractSet

from fsd.fuse.abi import DT_DIR, DT_LNK, DT_REG, DT_UNKNOWN
from fsd.fuse.filesystem import DirEntry

__all__ = ["hide_revoked", "snapshot"]


def snapshot(
    dirfd: int, own_ino: int, parent_ino: int, visible: AbstractSet[str] | None
) -> list[DirEntry | None]:
    """``.``, ``..`` and every entry of the open directory ``dirfd`` that ``visible`` shows
    (``None``: all), with its inode number and ``DT_*`` type."""
    entries: list[DirEntry | None] = [(b".", own_ino, DT_DIR), (b"..", parent_ino, DT_DIR)]
    with os.scandir(dirfd) as it:
        for entry in it:
            if visible is not None and entry.name not in visible:
                continue
            if entry.is_symlink():
                dtype = DT_LNK
            elif entry.is_dir(follow_symlinks=False):
                dtype = DT_DIR
            elif entry.is_file(follow_symlinks=False):
                dtype = DT_REG
            else:
                try:
                    dtype = stat.S_IFMT(entry.stat(follow_symlinks=False).st_mode) >> 12
                except OSError:
                    dtype = DT_UNKNOWN
            entries.append((os.fsencode(entry.name), entry.inode(), dtype))
    return entries


def hide_revoked(entries: list[DirEntry | None], visible: AbstractSet[str] | None) -> None:
    """Replace listed names that ``visible`` no longer shows with ``None`` (a revoke while
    the guest pages through the listing)."""
    if visible is None:
        return
    for index in range(2, len(entries)):
        entry = entries[index]
        if entry is not None and os.fsdecode(entry[0]) not in visible:
            entries[index] = None
