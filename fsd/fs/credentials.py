"""Per-request file-system credentials: create as the guest's caller, checked by the host kernel.

A root daemon that creates files as itself and chowns afterwards has a window where the file
belongs to root, ignores the host's permission checks for the caller (a guest user could
create files in any directory the daemon can write) and gets setgid directories and quota
wrong. Like virtiofsd, fsd instead switches the serving thread's fsuid/fsgid to the request's
uid/gid around each creating syscall: the host kernel then checks permissions and sets
ownership exactly as for that user.

``setfsuid``/``setfsgid`` change only the calling thread (glibc does not broadcast them, unlike
``setresuid``), and fsd serves each request start to finish on one thread, so switching and
restoring around the syscall cannot leak to another request. Dropping fsuid from 0 also
clears the thread's file-system capabilities (CAP_DAC_OVERRIDE, CAP_FOWNER...), so root's
overrides do not apply to the guest's users; restoring fsuid 0 brings them back.

The host kernel checks group access against the fsgid and the thread's supplementary groups.
The daemon's own supplementary groups would be wrongly granted to every guest user
(CVE-2022-0358 in virtiofsd), so :func:`drop_supplementary_groups` clears them at start-up.
FUSE sends one uid/gid; a client with CREATE_SUPP_GROUP (Linux 6.3 and later) adds, to a
request that creates a name, the parent directory's group when the caller is in it only by a
supplementary group, and the thread takes that group for the call (:func:`set_thread_groups`:
``setgroups(2)`` for this thread alone). Other checks that only a supplementary group would
pass fail on the host.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import platform
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Final

from fsd.fs.idmap import IdMaps

__all__ = [
    "THREAD_GROUPS",
    "Credentials",
    "MappedCredentials",
    "drop_supplementary_groups",
    "set_thread_groups",
]

log = logging.getLogger("fsd.fs")

_libc: Final = ctypes.CDLL(None, use_errno=True)
_setfsuid: Final = _libc.setfsuid
_setfsgid: Final = _libc.setfsgid
_setfsuid.argtypes = _setfsgid.argtypes = [ctypes.c_uint]
_setfsuid.restype = _setfsgid.restype = ctypes.c_uint
_QUERY: Final = 0xFFFFFFFF  # (uid_t) -1: an invalid id, so the call only reports the current one
_UNCHANGED: Final = contextlib.nullcontext()
#: setgroups(2) by number: glibc's wrapper changes every thread of the process (a "set*id"
#: call, which it broadcasts), and the group must be the serving thread's alone.
_SYS_SETGROUPS: Final = {"x86_64": 116, "aarch64": 159}.get(platform.machine())
_syscall: Final = _libc.syscall
#: Whether a thread can take a caller's supplementary group here (CREATE_SUPP_GROUP).
THREAD_GROUPS: Final = _SYS_SETGROUPS is not None


def set_thread_groups(groups: Sequence[int]) -> None:
    """Make ``groups`` this thread's supplementary groups (needs CAP_SETGID)."""
    if _SYS_SETGROUPS is None:
        raise OSError(errno.ENOSYS, f"no per-thread setgroups on {platform.machine()}")
    array = (ctypes.c_uint32 * len(groups))(*groups)
    if _syscall(ctypes.c_long(_SYS_SETGROUPS), ctypes.c_long(len(groups)), array) < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setgroups for this thread: {os.strerror(code)}")


def drop_supplementary_groups() -> None:
    """Clear the process's supplementary groups when running as root (CVE-2022-0358)."""
    if os.geteuid() == 0 and os.getgroups():
        os.setgroups([])
        log.info("dropped the daemon's supplementary groups")


class ActingAs:
    """The context of :meth:`Credentials.acting_as`: switch on entry, restore on exit."""

    __slots__ = ("_creds", "_gid", "_groups", "_supp_gid", "_switched", "_uid")

    def __init__(self, creds: Credentials, uid: int, gid: int, supp_gid: int | None) -> None:
        self._creds = creds
        self._uid = uid
        self._gid = gid
        self._supp_gid = supp_gid
        self._switched = False
        self._groups: list[int] | None = None

    def __enter__(self) -> None:
        self._switched = self._creds.switch(self._uid, self._gid)
        if self._supp_gid is not None:
            try:
                self._groups = self._creds.take_group(self._supp_gid)
            except BaseException:
                if self._switched:
                    self._creds.restore()
                raise

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._groups is not None:
                set_thread_groups(self._groups)
        finally:
            if self._switched:
                self._creds.restore()


class Credentials:
    """Switches the current thread's fsuid/fsgid to a caller's and back.

    Usage, around one creating syscall::

        with creds.acting_as(uid, gid):
            os.mkdir(...)

    Only a root daemon switches (anyone else cannot create files for other users, and the
    files are then owned by the daemon's user); a caller equal to the daemon costs nothing.
    """

    __slots__ = ("enabled", "gid", "uid")

    def __init__(self) -> None:
        self.uid = os.geteuid()
        self.gid = os.getegid()
        #: False unless root: setfsuid would fail (silently) for any other daemon.
        self.enabled = self.uid == 0

    def switch(self, uid: int, gid: int) -> bool:
        """Become ``uid``/``gid`` for file-system checks; False if nothing had to change.

        Raises EPERM (nothing switched) if the kernel refused, for example for an id that is
        not mapped in the daemon's user namespace: creating as root instead would be unsafe.
        """
        if not self.enabled or (uid == self.uid and gid == self.gid):
            return False
        if gid != self.gid:
            _setfsgid(gid)
            if _setfsgid(_QUERY) != gid:
                _setfsgid(self.gid)
                raise OSError(errno.EPERM, f"cannot switch to fsgid {gid}")
        if uid != self.uid:
            _setfsuid(uid)
            if _setfsuid(_QUERY) != uid:
                _setfsuid(self.uid)
                _setfsgid(self.gid)
                raise OSError(errno.EPERM, f"cannot switch to fsuid {uid}")
        return True

    def restore(self) -> None:
        """Back to the daemon's own fsuid/fsgid (fsuid first: it restores the capabilities)."""
        _setfsuid(self.uid)
        _setfsgid(self.gid)

    def acting_as(
        self, uid: int, gid: int, supp_gid: int | None = None
    ) -> AbstractContextManager[None]:
        """A ``with`` block run as ``uid``/``gid`` (see :meth:`switch`), and with the
        caller's supplementary group ``supp_gid`` if the client sent one, restored on exit;
        a shared no-op block when nothing would switch (CREATE and MKDIR pay no object)."""
        if not self.enabled or (uid == self.uid and gid == self.gid and supp_gid is None):
            return _UNCHANGED
        return ActingAs(self, uid, gid, supp_gid)

    def take_group(self, gid: int) -> list[int] | None:
        """Give this thread the caller's supplementary group ``gid``; the groups to put back
        afterwards, or None if nothing changed (not root, or no per-thread setgroups)."""
        if not self.enabled or not THREAD_GROUPS:
            return None
        previous = os.getgroups()  # this thread's: getgroups(2) reads the caller's own
        set_thread_groups([gid])
        return previous

    #: Whether permission-relevant operations (not only creating ones) run as the caller:
    #: only under id maps, where guest root need not be host root (docs/credentials.md).
    confines = False

    def confined(self, uid: int, gid: int) -> AbstractContextManager[None]:
        """A ``with`` block for a permission-relevant operation: run as the caller when
        :attr:`confines`, else as the daemon (the guest's kernel has checked it)."""
        return _UNCHANGED

    def host_uid(self, uid: int) -> int | None:
        """The host uid a caller acts as (itself here; ``None`` if unmapped)."""
        return uid

    def host_ids(self, uid: int, gid: int) -> tuple[int, int]:
        """The caller's host ids for a permission check; -1 for one without a host id (it
        matches no owner and is not root)."""
        return uid, gid

    def chown_ids(self, uid: int, gid: int) -> tuple[int, int]:
        """The host ids a guest chown asks for (-1: leave unchanged)."""
        return uid, gid

    @staticmethod
    def current() -> tuple[int, int]:
        """This thread's ``(fsuid, fsgid)`` (for tests and assertions)."""
        return _setfsuid(_QUERY), _setfsgid(_QUERY)


class MappedCredentials(Credentials):
    """:class:`Credentials` for guest ids under ``--uid-map``/``--gid-map``: switch to the
    caller's *host* ids.

    A separate class so that a daemon without maps pays nothing. A caller whose uid or gid
    has no host id is refused with EOVERFLOW, as the kernel refuses a create by an fsuid not
    mapped into the filesystem's user namespace: creating as anyone else would be wrong.
    """

    __slots__ = ("maps",)

    def __init__(self, maps: IdMaps) -> None:
        super().__init__()
        self.maps = maps

    confines = True

    def acting_as(
        self, uid: int, gid: int, supp_gid: int | None = None
    ) -> AbstractContextManager[None]:
        # Guest ids: equal to the daemon's or not, they are translated before the switch.
        return ActingAs(self, uid, gid, supp_gid)

    def take_group(self, gid: int) -> list[int] | None:
        """The caller's group through the map; a group outside it is not taken (the host
        then checks without it)."""
        host = self.maps.gid.to_host(gid)
        return None if host is None else super().take_group(host)

    def confined(self, uid: int, gid: int) -> AbstractContextManager[None]:
        return self.acting_as(uid, gid)

    def host_uid(self, uid: int) -> int | None:
        """The caller's host uid through the map; ``None`` if the map does not cover it."""
        return self.maps.uid.to_host(uid)

    def host_ids(self, uid: int, gid: int) -> tuple[int, int]:
        host_uid = self.maps.uid.to_host(uid)
        host_gid = self.maps.gid.to_host(gid)
        return (-1 if host_uid is None else host_uid), (-1 if host_gid is None else host_gid)

    def chown_ids(self, uid: int, gid: int) -> tuple[int, int]:
        """EINVAL for an id outside the maps, as the kernel refuses a chown to an id not
        mapped into the caller's user namespace."""
        if uid != -1:
            host = self.maps.uid.to_host(uid)
            if host is None:
                raise OSError(errno.EINVAL, f"uid {uid} is not in the uid map")
            uid = host
        if gid != -1:
            host = self.maps.gid.to_host(gid)
            if host is None:
                raise OSError(errno.EINVAL, f"gid {gid} is not in the gid map")
            gid = host
        return uid, gid

    def switch(self, uid: int, gid: int) -> bool:
        """Translate the guest caller's ids to the host's, then switch as the base class."""
        host_uid = self.maps.uid.to_host(uid)
        host_gid = self.maps.gid.to_host(gid)
        if host_uid is None or host_gid is None:
            raise OSError(errno.EOVERFLOW, f"caller {uid}:{gid} is not in the id maps")
        return super().switch(host_uid, host_gid)
