"""POSIX (``fcntl``) and BSD (``flock``) locks for the guest, held as real host locks.

POSIX locks belong to a lock owner (a guest process's file table). Each (inode, owner) gets
its own open file description of the file, and the lock is an OFD lock on it: the host
kernel then makes different owners conflict with each other and with host processes' locks,
and merges and splits one owner's ranges exactly as POSIX says. BSD locks belong to the open
file, so ``flock`` is taken on the guest handle's own fd.

A blocking request (SETLKW) never blocks the daemon: it is retried with the non-blocking call
by one waiter thread every few milliseconds and answered through its :class:`Deferred` when
it succeeds, fails, is interrupted (INTERRUPT), or the session ends (DESTROY).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import threading
import time
from typing import Final

from fsd.fs import procfd
from fsd.fuse.abi import OFFSET_MAX
from fsd.fuse.deferred import Deferred

__all__ = ["OFFSET_MAX", "LockTable"]

log = logging.getLogger("fsd.locks")

#: struct flock on 64-bit Linux: l_type, l_whence, (pad), l_start, l_len, l_pid, (pad).
FLOCK: Final = struct.Struct("<hh4xqqi4x")
#: How often the waiter thread retries blocked SETLKW requests.
RETRY_INTERVAL: Final = 0.005
#: INTERRUPTs remembered for requests not yet seen (hiprio overtook the request queue).
_EARLY_MAX: Final = 64

_F_OFD_GETLK: Final = 36
_F_OFD_SETLK: Final = 37
_LOCK_TYPES: Final = (fcntl.F_RDLCK, fcntl.F_WRLCK, fcntl.F_UNLCK)
_FLOCK_OPS: Final = {fcntl.F_RDLCK: fcntl.LOCK_SH, fcntl.F_WRLCK: fcntl.LOCK_EX,
                     fcntl.F_UNLCK: fcntl.LOCK_UN}  # fmt: skip
_BUSY: Final = frozenset({errno.EAGAIN, errno.EACCES})
#: The access modes F_OFD_SETLK accepts for each lock type (else EBADF).
_MODES_FOR: Final = {
    fcntl.F_RDLCK: (os.O_RDONLY, os.O_RDWR),
    fcntl.F_WRLCK: (os.O_WRONLY, os.O_RDWR),
}

Range = tuple[int, int]
"""An inclusive byte range, as FUSE sends it."""


class _Owner:
    """One guest lock owner's open file description of one inode, and what it holds.

    ``ranges`` only tracks coverage (not lock types) so that GETLK can name the guest pid
    behind a conflicting lock: the host reports -1 for every OFD lock.
    """

    __slots__ = ("fd", "mode", "pid", "ranges")

    def __init__(self, fd: int, mode: int) -> None:
        self.fd = fd
        #: ``fd``'s access mode (``O_ACCMODE`` bits): what lock types it can hold.
        self.mode = mode
        self.pid = 0
        self.ranges: list[Range] = []

    def record(self, start: int, end: int, kind: int, pid: int) -> None:
        kept = [r for r in self.ranges if r[1] < start or r[0] > end]
        for lo, hi in self.ranges:
            if lo < start <= hi:
                kept.append((lo, start - 1))
            if lo <= end < hi:
                kept.append((end + 1, hi))
        if kind != fcntl.F_UNLCK:
            kept.append((start, end))
            self.pid = pid
        self.ranges = kept

    def overlaps(self, start: int, end: int) -> bool:
        return any(lo <= end and start <= hi for lo, hi in self.ranges)


class _Waiter:
    """A SETLKW waiting for the host to grant it."""

    __slots__ = ("deferred", "end", "fd", "kind", "owner", "pid", "start")

    def __init__(
        self,
        deferred: Deferred,
        fd: int,
        owner: _Owner | None,
        start: int,
        end: int,
        kind: int,
        pid: int,
    ) -> None:
        self.deferred = deferred
        #: The owner's description (POSIX), or a dup of the handle's fd (flock), closed after.
        self.fd = fd
        self.owner = owner
        self.start = start
        self.end = end
        self.kind = kind
        self.pid = pid


def _flock_args(kind: int, start: int, end: int) -> bytes:
    return FLOCK.pack(kind, os.SEEK_SET, start, 0 if end == OFFSET_MAX else end - start + 1, 0)


def _check(start: int, end: int, kind: int) -> None:
    if kind not in _LOCK_TYPES:
        raise OSError(errno.EINVAL, f"unknown lock type {kind}")
    if start > OFFSET_MAX or end > OFFSET_MAX or end < start:
        raise OSError(errno.EINVAL, f"bad lock range {start}..{end}")


class LockTable:
    """Every lock the guest holds through this filesystem, and every SETLKW still waiting.

    Called from the queue threads (one at a time, under the server's lock) and from its own
    waiter thread; ``_mutex`` guards the tables and the descriptions' lifetime.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._owners: dict[tuple[int, int], _Owner] = {}
        self._waiting: dict[int, _Waiter] = {}  # by the request's unique
        self._early: dict[int, None] = {}  # interrupted uniques not waiting (yet), oldest first
        self._thread: threading.Thread | None = None

    def __bool__(self) -> bool:
        """Whether any lock state exists (FLUSH and RELEASE skip all work when not)."""
        return bool(self._owners or self._waiting)

    # --- POSIX locks -----------------------------------------------------------------------

    def _owner(self, nodeid: int, owner: int, handle_fd: int, kind: int) -> _Owner:
        """The owner's description of the inode, opened on first use with the handle's access
        mode, widened if a lock ``kind`` needs what a later handle grants (caller holds
        _mutex)."""
        found = self._owners.get((nodeid, owner))
        if found is None:
            mode = _access_mode(handle_fd)
            found = _Owner(_reopen(handle_fd, mode), mode)
            self._owners[nodeid, owner] = found
        elif found.mode not in _MODES_FOR.get(kind, (found.mode,)):
            self._widen(found, handle_fd)
        return found

    def _widen(self, found: _Owner, handle_fd: int) -> None:
        """Move an owner to a read-write description: it locked through a read-only handle and
        now asks for a write lock through a writable one (or the other way round).

        Its locks move along: a read-only description held only read locks, which are taken
        on the new one before the old one closes (no gap). A write-only one held only write
        locks, which would conflict, so they are dropped and retaken (another owner could
        slip in between; then the range is lost, and logged). If the handle adds nothing,
        the lock is left to fail with EBADF as it would on Linux.
        """
        if _access_mode(handle_fd) == found.mode:
            return
        new = _reopen(handle_fd, os.O_RDWR)
        old, held = found.fd, fcntl.F_RDLCK if found.mode == os.O_RDONLY else fcntl.F_WRLCK
        if held == fcntl.F_WRLCK:
            os.close(old)
        for lo, hi in found.ranges:
            try:
                fcntl.fcntl(new, _F_OFD_SETLK, _flock_args(held, lo, hi))
            except OSError as exc:
                log.warning("lost a lock on %d..%d while widening its description: %s", lo, hi, exc)
        if held == fcntl.F_RDLCK:
            os.close(old)
        found.fd, found.mode = new, os.O_RDWR
        for waiter in self._waiting.values():
            if waiter.owner is found:
                waiter.fd = new

    def getlk(
        self, nodeid: int, owner: int, handle_fd: int, start: int, end: int, kind: int
    ) -> tuple[int, int, int, int]:
        """The first lock that would block (start, end, type, guest pid); F_UNLCK if none.

        The pid is a guest pid for another guest owner's lock, and 0 for a host process's:
        the guest cannot make sense of host pids.
        """
        _check(start, end, kind)
        with self._mutex:
            me = self._owner(nodeid, owner, handle_fd, fcntl.F_UNLCK)
            got = fcntl.fcntl(me.fd, _F_OFD_GETLK, _flock_args(kind, start, end))
            l_type, _, l_start, l_len, l_pid = FLOCK.unpack(got)
            if l_type == fcntl.F_UNLCK:
                return start, end, fcntl.F_UNLCK, 0
            l_end = OFFSET_MAX if l_len == 0 else l_start + l_len - 1
            pid = 0
            if l_pid == -1:  # an OFD lock: maybe another guest owner's
                for (node, _), other in self._owners.items():
                    if node == nodeid and other is not me and other.overlaps(l_start, l_end):
                        pid = other.pid
                        break
            return l_start, l_end, l_type, pid

    def setlk(
        self,
        nodeid: int,
        owner: int,
        handle_fd: int,
        start: int,
        end: int,
        kind: int,
        pid: int,
        wait: Deferred | None = None,
    ) -> bool:
        """Take, change or drop an owner's lock; True when done.

        A conflict raises EAGAIN, unless ``wait`` is given: then the request is queued for
        the waiter thread, which finishes ``wait``, and False is returned.
        """
        _check(start, end, kind)
        with self._mutex:
            if wait is not None and self._early.pop(wait.unique, 1) is None:
                raise OSError(errno.EINTR, "interrupted before it was seen")
            me = self._owner(nodeid, owner, handle_fd, kind)
            try:
                fcntl.fcntl(me.fd, _F_OFD_SETLK, _flock_args(kind, start, end))
            except OSError as exc:
                if wait is None or exc.errno not in _BUSY:
                    raise
                self._queue(_Waiter(wait, me.fd, me, start, end, kind, pid))
                return False
            me.record(start, end, kind, pid)
            return True

    def drop_owner(self, nodeid: int, owner: int) -> None:
        """Release all of one owner's POSIX locks on the inode (FLUSH: the owner closed it)."""
        done: list[tuple[Deferred, int]] = []
        with self._mutex:
            found = self._owners.pop((nodeid, owner), None)
            if found is not None:
                self._close(found, done)
        _finish_all(done)

    def drop_inode(self, nodeid: int) -> None:
        """Release every POSIX lock on the inode (its last guest handle was released)."""
        done: list[tuple[Deferred, int]] = []
        with self._mutex:
            for key in [k for k in self._owners if k[0] == nodeid]:
                self._close(self._owners.pop(key), done)
        _finish_all(done)

    def has_inode(self, nodeid: int) -> bool:
        return any(k[0] == nodeid for k in self._owners)

    def _close(self, found: _Owner, done: list[tuple[Deferred, int]]) -> None:
        """Close a description (dropping its locks); its waiters end with EBADF, as in Linux."""
        for unique, waiter in list(self._waiting.items()):
            if waiter.owner is found:
                del self._waiting[unique]
                done.append((waiter.deferred, errno.EBADF))
        os.close(found.fd)
        found.fd = -1

    # --- BSD locks -------------------------------------------------------------------------

    def flock(self, handle_fd: int, kind: int, wait: Deferred | None = None) -> bool:
        """flock(2) on the guest's open file; same contract as :meth:`setlk`."""
        if kind not in _LOCK_TYPES:
            raise OSError(errno.EINVAL, f"unknown lock type {kind}")
        op = _FLOCK_OPS[kind]
        try:
            fcntl.flock(handle_fd, op | fcntl.LOCK_NB)
        except OSError as exc:
            if wait is None or exc.errno not in _BUSY:
                raise
            # A dup shares the open file (and so the lock) but outlives a RELEASE of the fd.
            fd = os.dup(handle_fd)
            with self._mutex:
                self._queue(_Waiter(wait, fd, None, 0, OFFSET_MAX, kind, 0))
            return False
        return True

    # --- waiting ---------------------------------------------------------------------------

    def _queue(self, waiter: _Waiter) -> None:
        """Park a SETLKW (caller holds _mutex) and make sure the waiter thread runs."""
        unique = waiter.deferred.unique
        old = self._waiting.pop(unique, None)
        if old is not None:  # a unique is reused only after its reply: a confused client
            self._end(old)
            old.deferred.on_cancel = None
            old.deferred.cancel()
        self._waiting[unique] = waiter
        waiter.deferred.on_cancel = lambda: self._forget(unique, waiter)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fsd-locks", daemon=True)
            self._thread.start()

    def _forget(self, unique: int, waiter: _Waiter) -> None:
        with self._mutex:
            if self._waiting.get(unique) is waiter:
                del self._waiting[unique]
                self._end(waiter)

    def _end(self, waiter: _Waiter) -> None:
        if waiter.owner is None:
            os.close(waiter.fd)

    def interrupt(self, unique: int) -> None:
        """INTERRUPT: a waiting SETLKW with this unique ends with EINTR; others are done.

        An unknown unique is remembered (a few): on vhost-user the INTERRUPT comes on the
        hiprio queue and may be served before its request on the request queue.
        """
        with self._mutex:
            waiter = self._waiting.pop(unique, None)
            if waiter is None:
                self._early[unique] = None
                if len(self._early) > _EARLY_MAX:
                    del self._early[next(iter(self._early))]
                return
            self._end(waiter)
        waiter.deferred.finish(errno.EINTR)

    def clear(self) -> None:
        """DESTROY: end every wait with EINTR and drop every POSIX lock."""
        with self._mutex:
            waiters, self._waiting = list(self._waiting.values()), {}
            for waiter in waiters:
                self._end(waiter)
            owners, self._owners = list(self._owners.values()), {}
            for found in owners:
                os.close(found.fd)
                found.fd = -1
        _finish_all([(waiter.deferred, errno.EINTR) for waiter in waiters])

    def _try(self, waiter: _Waiter) -> int | None:
        """One non-blocking attempt: None while still blocked, else the errno (0: granted)."""
        try:
            if waiter.owner is None:
                fcntl.flock(waiter.fd, _FLOCK_OPS[waiter.kind] | fcntl.LOCK_NB)
            else:
                args = _flock_args(waiter.kind, waiter.start, waiter.end)
                fcntl.fcntl(waiter.fd, _F_OFD_SETLK, args)
                waiter.owner.record(waiter.start, waiter.end, waiter.kind, waiter.pid)
        except OSError as exc:
            return None if exc.errno in _BUSY else (exc.errno or errno.EIO)
        return 0

    def _run(self) -> None:
        """The waiter thread: retry every waiting SETLKW, oldest first, until none is left."""
        while True:
            time.sleep(RETRY_INTERVAL)
            done: list[tuple[Deferred, int]] = []
            with self._mutex:
                for unique, waiter in list(self._waiting.items()):
                    result = self._try(waiter)
                    if result is not None:
                        del self._waiting[unique]
                        self._end(waiter)
                        done.append((waiter.deferred, result))
                if not self._waiting and not done:
                    self._thread = None
                    return
            _finish_all(done)


def _finish_all(done: list[tuple[Deferred, int]]) -> None:
    """Answer waiters collected under _mutex, outside it: the transport's callback pushes to
    a virtqueue or writes /dev/fuse, and must not run with the table locked."""
    for deferred, error in done:
        try:
            deferred.finish(error)
        except Exception:
            log.exception("completing a lock request failed")


def _access_mode(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE


def _reopen(handle_fd: int, mode: int) -> int:
    """A new open file description of the file behind ``handle_fd`` (never its path).

    ``mode`` is the access the guest's handles were granted, never more: a read-only file is
    not reopened for writing (no write access as root, no IN_CLOSE_WRITE for host watchers).
    O_NONBLOCK: a host lease must not make the open wait.
    """
    flags = os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    return procfd.reopen(handle_fd, mode | flags)
