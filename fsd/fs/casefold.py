"""ASCII case-insensitive names (crosvm's ``ascii_casefold``), for guests that expect them.

With ``ascii_casefold`` a name the guest asks for that is not in the directory as spelt is
looked for with ASCII letters folded (``FOO.txt`` answers ``foo.TXT``), as crosvm does for
LOOKUP; fsd also removes and renames such a name by its host spelling, where crosvm's own
device answers ENOENT. Names are created as the guest spells them.

Finding a folded name means listing the directory, so each directory's folded names are kept
for the entry lifetime (crosvm keeps them as long): built at the first miss, with the names
fsd itself creates added as it goes, and dropped when they expire. A kept name only proposes
a host name, which is then looked up for real, so one removed meanwhile answers ENOENT; one
the host made meanwhile may stay unseen for that lifetime, as a cached entry would.
"""

from __future__ import annotations

import os
import time
from typing import Final

from fsd.fs import procfd
from fsd.fs.inodes import Inode

__all__ = ["CasefoldNames"]

_LIST_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class CasefoldNames:
    """Per directory (its ``(st_dev, st_ino)``), folded name -> the host's spelling."""

    __slots__ = ("_dirs", "_lifetime")

    def __init__(self, lifetime: float) -> None:
        self._lifetime = lifetime
        self._dirs: dict[tuple[int, int], tuple[float, dict[bytes, bytes]]] = {}

    def find(self, directory: Inode, name: bytes) -> bytes | None:
        """The host's spelling of ``name`` in ``directory`` with ASCII case folded, if any
        entry matches (of several, the first in byte order)."""
        return self._names(directory).get(name.lower())

    def added(self, directory: Inode, name: bytes) -> None:
        """``name`` is (about to be) created in ``directory``."""
        kept = self._dirs.get(directory.key)
        if kept is not None:
            kept[1].setdefault(name.lower(), name)

    def _names(self, directory: Inode) -> dict[bytes, bytes]:
        now = time.monotonic()
        kept = self._dirs.get(directory.key)
        if kept is not None and kept[0] > now:
            return kept[1]
        for key in [k for k, (until, _) in self._dirs.items() if until <= now]:
            del self._dirs[key]
        fd = procfd.reopen(directory.fd, _LIST_FLAGS)
        try:
            listed = sorted(os.fsencode(n) for n in os.listdir(fd))
        finally:
            os.close(fd)
        names: dict[bytes, bytes] = {}
        for host_name in listed:
            names.setdefault(host_name.lower(), host_name)  # bytes.lower(): ASCII only
        self._dirs[directory.key] = (now + self._lifetime, names)
        return names
