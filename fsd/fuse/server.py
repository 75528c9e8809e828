"""The FUSE server: one request's bytes in, one reply's bytes out, errors turned into errnos.

Transports (virtqueues, ``/dev/fuse``) hand :meth:`FuseServer.handle` a request and the space
for its reply; it decodes the request, calls the filesystem, and encodes the answer. This is the
one place where exceptions become errnos: ``OSError`` → its errno, a malformed request → EINVAL,
anything else → EIO and a log line. Nothing escapes :meth:`~FuseServer.handle`.

Handlers run inline and synchronously; the caller never runs two at once.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Literal

from fsd.fuse import abi
from fsd.fuse.abi import (
    ACCESS_IN,
    ATTR_OUT,
    BATCH_FORGET_IN,
    COPY_FILE_RANGE_IN,
    CREATE_IN,
    DIRENT,
    ENTRY_OUT,
    FALLOCATE_IN,
    FATTR_KILL_SUIDGID,
    FLUSH_IN,
    FORGET_IN,
    FORGET_ONE,
    FSYNC_FDATASYNC,
    FSYNC_IN,
    GETXATTR_IN,
    GETXATTR_OUT,
    IN_HEADER,
    INIT_IN,
    INIT_IN_V1,
    INIT_IN_V2,
    INIT_OUT,
    INTERRUPT_IN,
    IOCTL_IN,
    LINK_IN,
    LK_FLOCK,
    LK_IN,
    LK_OUT,
    LSEEK_IN,
    LSEEK_OUT,
    MKDIR_IN,
    MKNOD_IN,
    OPEN_IN,
    OPEN_KILL_SUIDGID,
    OPEN_OUT,
    OUT_HEADER,
    READ_IN,
    RELEASE_IN,
    RENAME2_IN,
    RENAME_EXCHANGE,
    RENAME_IN,
    RENAME_NOREPLACE,
    RENAME_WHITEOUT,
    SETATTR_IN,
    SETXATTR_IN,
    STATFS_OUT,
    STATX_BASIC_STATS,
    STATX_BTIME,
    STATX_IN,
    STATX_OUT,
    WRITE_IN,
    WRITE_KILL_SUIDGID,
    WRITE_OUT,
    XATTR_LIST_MAX,
    XATTR_SIZE_MAX,
    InitFlag,
    Opcode,
)
from fsd.fuse.codec import (
    attr_values,
    mapped_attr_values,
    parse_name,
    parse_symlink,
    parse_two_names,
    parse_xattr_name,
    split_timeout,
)
from fsd.fuse.deferred import DEFERRED, Deferred, defer
from fsd.fuse.errors import HiddenByAllowlist, ProtocolError
from fsd.fuse.session import FuseSession
from fsd.sgbuf import BufferTooShort, SgReader, SgWriter

if TYPE_CHECKING:
    from fsd.fs.passthrough import PassthroughFs

__all__ = ["FuseServer", "Transport"]

log = logging.getLogger("fsd.fuse")

Transport = Literal["vhost-user", "dev-fuse"]
Handler = Callable[[int, SgReader, SgWriter], int]

_HDR: Final = OUT_HEADER.size
_NSEC: Final = 1_000_000_000
#: Returned by a handler that must not be answered.
_NO_REPLY: Final = -1
#: Returned by a handler that will be answered later (see fsd.fuse.deferred).
_DEFER: Final = -2
_NO_REPLY_OPS: Final = frozenset(
    {Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.INTERRUPT, Opcode.NOTIFY_REPLY}
)
_INIT: Final = int(Opcode.INIT)
_ENTRY_REPLY: Final = OUT_HEADER.size + ENTRY_OUT.size
_OPEN_REPLY: Final = OUT_HEADER.size + OPEN_OUT.size
#: Reply space a request must come with before it is acted on (it creates client state).
_MIN_REPLY: Final = {
    Opcode.LOOKUP: _ENTRY_REPLY,
    Opcode.MKDIR: _ENTRY_REPLY,
    Opcode.MKNOD: _ENTRY_REPLY,
    Opcode.SYMLINK: _ENTRY_REPLY,
    Opcode.LINK: _ENTRY_REPLY,
    Opcode.CREATE: _ENTRY_REPLY + OPEN_OUT.size,
    Opcode.TMPFILE: _ENTRY_REPLY + OPEN_OUT.size,
    Opcode.OPEN: _OPEN_REPLY,
    Opcode.OPENDIR: _OPEN_REPLY,
}
_RENAME_FLAGS: Final = RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT
_ENTRY_SIZE: Final = ENTRY_OUT.size
_DIRENT_SIZE: Final = DIRENT.size


class FuseServer:
    """Serves FUSE requests from one client (a guest's virtiofs or the host kernel) on ``fs``.

    ``transport`` matters once: a virtiofs guest unmounting sends DESTROY and never FORGETs
    what it still holds, so DESTROY drops the whole table and gets no reply there; on
    ``/dev/fuse`` DESTROY is answered as libfuse does.
    """

    def __init__(self, fs: PassthroughFs, *, transport: Transport = "vhost-user") -> None:
        self.fs = fs
        self.transport = transport
        options = fs.options
        optional = InitFlag.WRITEBACK_CACHE if options.writeback else InitFlag(0)
        if not options.rewrite_security_xattrs:
            # The server drops set-id bits when told to (and the host write drops
            # security.capability), so the guest need not GETXATTR before every WRITE
            # (prototype-lessons pitfall 16). A rewritten security.capability is a user.* xattr
            # the host never drops: then the guest must keep checking and removing it itself.
            optional |= InitFlag.HANDLE_KILLPRIV_V2
        self.session = FuseSession(optional)
        self._entry_valid = split_timeout(options.timeout)
        self._attr_valid = self._entry_valid
        self._negative_valid = split_timeout(options.negative_timeout)
        # Owners in replies: host ids as they are, or through --uid-map/--gid-map.
        maps = options.id_maps
        self._attr_values = (
            attr_values
            if maps is None
            else mapped_attr_values(maps.uid.to_guest, maps.gid.to_guest)
        )
        # Per-request caller identity, set by handle() before dispatch.
        self._uid = 0
        self._gid = 0
        self._body_len = 0
        self._unique = 0  # for a Deferred (SETLKW)
        self._handlers: dict[int, Handler] = {
            Opcode.INIT: self._init,
            Opcode.DESTROY: self._destroy,
            Opcode.LOOKUP: self._lookup,
            Opcode.FORGET: self._forget,
            Opcode.BATCH_FORGET: self._batch_forget,
            Opcode.INTERRUPT: self._interrupt,
            Opcode.GETATTR: self._getattr,
            Opcode.STATX: self._statx,
            Opcode.SETATTR: self._setattr,
            Opcode.READLINK: self._readlink,
            Opcode.SYMLINK: self._symlink,
            Opcode.MKNOD: self._mknod,
            Opcode.MKDIR: self._mkdir,
            Opcode.UNLINK: self._unlink,
            Opcode.RMDIR: self._rmdir,
            Opcode.RENAME: self._rename,
            Opcode.RENAME2: self._rename2,
            Opcode.LINK: self._link,
            Opcode.OPEN: self._open,
            Opcode.CREATE: self._create,
            Opcode.READ: self._read,
            Opcode.WRITE: self._write,
            Opcode.FLUSH: self._flush,
            Opcode.RELEASE: self._release,
            Opcode.FSYNC: self._fsync,
            Opcode.OPENDIR: self._opendir,
            Opcode.READDIR: self._readdir,
            Opcode.READDIRPLUS: self._readdirplus,
            Opcode.RELEASEDIR: self._releasedir,
            Opcode.FSYNCDIR: self._fsyncdir,
            Opcode.STATFS: self._statfs,
            Opcode.ACCESS: self._access,
            Opcode.SYNCFS: self._syncfs,
            Opcode.FALLOCATE: self._fallocate,
            Opcode.LSEEK: self._lseek,
            Opcode.COPY_FILE_RANGE: self._copy_file_range,
            Opcode.SETXATTR: self._setxattr,
            Opcode.GETXATTR: self._getxattr,
            Opcode.LISTXATTR: self._listxattr,
            Opcode.REMOVEXATTR: self._removexattr,
            Opcode.IOCTL: self._ioctl,
            Opcode.TMPFILE: self._tmpfile,
            Opcode.GETLK: self._getlk,
            Opcode.SETLK: self._setlk,
            Opcode.SETLKW: self._setlkw,
        }

    # --- the entry point -------------------------------------------------------------------

    def handle(self, request: SgReader, reply: SgWriter) -> int:
        """Serve one FUSE request whose bytes are in ``request`` (in_header + args + data).

        Write the reply (out_header + payload) into ``reply`` starting at offset 0. Return the
        number of reply bytes written; 0 means no reply (FORGET, BATCH_FORGET, INTERRUPT, and
        DESTROY on vhost-user); :data:`~fsd.fuse.deferred.DEFERRED` means the reply comes later
        (SETLKW), through the ``Deferred`` that ``take_deferred()`` then returns on this
        thread. Never raises.
        """
        try:
            length, opcode, unique, nodeid, uid, gid, _pid, _extlen, _pad = request.read_struct(
                IN_HEADER
            )
        except BufferTooShort:
            log.warning("dropping a request shorter than fuse_in_header")
            return 0
        error = 0
        try:
            body_len = length - IN_HEADER.size
            if body_len < 0 or body_len > request.remaining:
                raise ProtocolError(f"in_header.len {length} does not match the request")
            self._body_len = body_len
            self._uid = uid
            self._gid = gid
            self._unique = unique
            if not self.session.initialized and opcode != _INIT:
                raise OSError(errno.EIO, "request before INIT")
            handler = self._handlers.get(opcode)
            if handler is None:
                raise OSError(errno.ENOSYS, "not implemented")
            if reply.capacity < _MIN_REPLY.get(opcode, 0):
                # Checked before acting: an open handle or a lookup count whose reply cannot
                # be written would never be released by the client.
                raise ProtocolError(f"{reply.capacity} bytes of reply space are too few")
            size = handler(nodeid, request, reply)
            if size < 0:
                return 0 if size == _NO_REPLY else DEFERRED
            reply.pack_at(OUT_HEADER, 0, _HDR + size, 0, unique)
            return _HDR + size
        except OSError as exc:
            error = exc.errno or errno.EIO
            if error == errno.ENOSYS or opcode in _NO_REPLY_OPS:
                log.debug("%s nodeid %d: %s", _op_name(opcode), nodeid, exc)
        except (ProtocolError, BufferTooShort) as exc:
            error = exc.errno if isinstance(exc, ProtocolError) else errno.EINVAL
            log.warning("malformed %s (nodeid %d): %s", _op_name(opcode), nodeid, exc)
        except (OverflowError, ValueError) as exc:
            # An offset, size or id beyond what the host's calls take (e.g. 2**64 - 1).
            error = errno.EINVAL
            log.warning("%s nodeid %d: value out of range: %s", _op_name(opcode), nodeid, exc)
        except Exception:
            error = errno.EIO
            log.exception("internal error serving %s nodeid %d", _op_name(opcode), nodeid)
        if opcode in _NO_REPLY_OPS:
            return 0
        try:
            reply.pack_at(OUT_HEADER, 0, _HDR, -error, unique)
        except BufferTooShort:
            log.warning("no room for a reply to %s unique %d", _op_name(opcode), unique)
            return 0
        return _HDR

    # --- helpers ---------------------------------------------------------------------------

    def _body(self, request: SgReader) -> bytes:
        """The rest of this request's argument bytes (names, symlink targets)."""
        return request.read(min(self._body_len, request.remaining)) if self._body_len else b""

    def _entry(self, reply: SgWriter, offset: int, nodeid: int, st: os.stat_result) -> int:
        e_s, e_ns = self._entry_valid
        a_s, a_ns = self._attr_valid
        reply.pack_at(ENTRY_OUT, offset, nodeid, 0, e_s, a_s, e_ns, a_ns, *self._attr_values(st))
        return ENTRY_OUT.size

    def _attr(self, reply: SgWriter, st: os.stat_result) -> int:
        a_s, a_ns = self._attr_valid
        reply.pack_at(ATTR_OUT, _HDR, a_s, a_ns, 0, *self._attr_values(st))
        return ATTR_OUT.size

    # --- session ---------------------------------------------------------------------------

    def _init(self, _nodeid: int, request: SgReader, reply: SgWriter) -> int:
        n = self._body_len
        flags2 = 0
        if n >= INIT_IN.size:
            major, minor, readahead, flags, flags2 = request.read_struct(INIT_IN)
        elif n >= INIT_IN_V2.size:
            major, minor, readahead, flags = request.read_struct(INIT_IN_V2)
        elif n >= INIT_IN_V1.size:
            (major, minor), readahead, flags = request.read_struct(INIT_IN_V1), 0, 0
        else:
            raise ProtocolError("INIT shorter than 8 bytes")
        if major < abi.KERNEL_VERSION:
            raise OSError(errno.EPROTO, f"unsupported FUSE major version {major}")
        if flags & InitFlag.INIT_EXT:
            flags |= flags2 << 32
        if self.session.initialized:
            # A guest rebooted without unmounting: start from a clean table.
            self.fs.destroy()
        values = self.session.negotiate(major, minor, readahead, flags)
        size = self.session.init_out_size() if self.session.initialized else INIT_OUT.size
        if size == INIT_OUT.size:
            reply.pack_at(INIT_OUT, _HDR, *values)
        else:
            reply.write_at(_HDR, INIT_OUT.pack(*values)[:size])
        log.info(
            "FUSE session: kernel %d.%d, replied %d.%d, flags %#x",
            major,
            minor,
            values[0],
            values[1],
            values[3] | (values[10] << 32),
        )
        return size

    def _destroy(self, _nodeid: int, _request: SgReader, _reply: SgWriter) -> int:
        self.fs.destroy()
        self.session.reset()
        return _NO_REPLY if self.transport == "vhost-user" else 0

    def _interrupt(self, _nodeid: int, request: SgReader, _reply: SgWriter) -> int:
        # Only a waiting SETLKW can be interrupted; every other request ran to completion.
        (target,) = request.read_struct(INTERRUPT_IN)
        self.fs.locks.interrupt(target)
        return _NO_REPLY

    # --- inodes ----------------------------------------------------------------------------

    def _lookup(self, nodeid: int, request: SgReader, reply: SgWriter) -> int:
        name = parse_name(self._body(request), allow_dots=True)
        try:
            inode, st = self.fs.lookup(nodeid, name, (self._uid, self._gid))
        except FileNotFoundError as exc:
            if isinstance(exc, HiddenByAllowlist) or not any(self._negative_valid):
                raise
            n_s, n_ns = self._negative_valid
            reply.pack_at(ENTRY_OUT, _HDR, 0, 0, n_s, 0, n_ns, 0, *(0,) * 16)
            return ENTRY_OUT.size
        return self._entry(reply, _HDR, inode.nodeid, st)

    def _forget(self, nodeid: int, request: SgReader, _reply: SgWriter) -> int:
        (nlookup,) = request.read_struct(FORGET_IN)
        self.fs.forget(nodeid, nlookup)
        return _NO_REPLY

    def _batch_forget(self, _nodeid: int, request: SgReader, _reply: SgWriter) -> int:
        count, _ = request.read_struct(BATCH_FORGET_IN)
        count = min(count, request.remaining // FORGET_ONE.size)
        forget = self.fs.forget
        for _ in range(count):
            nodeid, nlookup = request.read_struct(FORGET_ONE)
            forget(nodeid, nlookup)
        return _NO_REPLY

    def _getattr(self, nodeid: int, _request: SgReader, reply: SgWriter) -> int:
        return self._attr(reply, self.fs.getattr(nodeid))

    def _statx(self, nodeid: int, request: SgReader, reply: SgWriter) -> int:
        """GETATTR plus the birth time, which is all Linux asks STATX for (it sends it only when
        a caller wants btime); every basic field is always filled, so the kernel caches them."""
        request.read_struct(STATX_IN)  # flags, fh, sync hints, mask: the answer is the same
        st, btime = self.fs.statx(nodeid)
        (ino, size, blocks, a_s, m_s, c_s, a_ns, m_ns, c_ns, mode, nlink, uid, gid, _rdev, blksize,
         _flags) = self._attr_values(st)  # fmt: skip
        mask = STATX_BASIC_STATS if btime is None else STATX_BASIC_STATS | STATX_BTIME
        b_s, b_ns = btime or (0, 0)
        v_s, v_ns = self._attr_valid
        reply.pack_at(
            STATX_OUT, _HDR, v_s, v_ns, 0,
            mask, blksize, 0, nlink, uid, gid, mode & 0xFFFF, ino, size, blocks, 0,
            a_s, a_ns, b_s, b_ns, c_s, c_ns, m_s, m_ns,
            os.major(st.st_rdev), os.minor(st.st_rdev), 0, 0,
        )  # fmt: skip
        return STATX_OUT.size

    def _setattr(self, nodeid: int, request: SgReader, reply: SgWriter) -> int:
        (valid, _, fh, size, _lock, atime, mtime, _ctime, atimensec, mtimensec, _ctimensec, mode,
         _, uid, gid, _) = request.read_struct(SETATTR_IN)  # fmt: skip
        st = self.fs.setattr(
            nodeid,
            valid,
            fh,
            size,
            atime * _NSEC + atimensec,
            mtime * _NSEC + mtimensec,
            mode,
            uid,
            gid,
            (self._uid, self._gid),
        )
        if valid & FATTR_KILL_SUIDGID:
            self.fs.kill_suidgid(nodeid)
            st = self.fs.getattr(nodeid)
        return self._attr(reply, st)

    def _readlink(self, nodeid: int, _request: SgReader, reply: SgWriter) -> int:
        target = self.fs.readlink(nodeid)
        reply.write_at(_HDR, target)
        return len(target)

    def _access(self, nodeid: int, request: SgReader, _reply: SgWriter) -> int:
        mask, _ = request.read_struct(ACCESS_IN)
        self.fs.access(nodeid, mask, self._uid, self._gid)
        return 0

    def _statfs(self, nodeid: int, _request: SgReader, reply: SgWriter) -> int:
        sv = self.fs.statfs(nodeid)
        reply.pack_at(
            STATFS_OUT,
            _HDR,
            sv.f_blocks,
            sv.f_bfree,
            sv.f_bavail,
            sv.f_files,
            sv.f_ffree,
            sv.f_bsize,
            sv.f_namemax,
            sv.f_frsize,
            0,
        )
        return STATFS_OUT.size

    # --- names -----------------------------------------------------------------------------

    def _mkdir(self, nodeid: int, request: SgReader, reply: SgWriter) -> int:
        mode, _umask = request.read_struct(MKDIR_IN)
        self._body_len -= MKDIR_IN.size
        name = parse_name(self._body(request))
        inode, st = self.fs.mkdir(nodeid, name, mode, self._uid, self._gid)
        return self._entry(reply, _HDR, inode.nodeid, st)

    def _mknod(self, nodeid: int, request: SgReader, reply: SgWriter) -> int:
        mode, rdev, _umask, _ = request.read_struct(MKNOD_IN)
        self._body_len -= MKNOD_IN.size
        name = parse_name(self._body(request))
        inode, st = self.fs.mknod(nodeid, name, mode, rdev, self._uid, self._gid)
        return self._entry(reply, _HDR, inode.nodeid, st)

    def _symlink(self, nodeid: int, request: SgReader, reply: SgWriter) -> int:
        name, target = parse_symlink(self._body(request))
        inode, st = self.fs.symlink(nodeid, name, target, self._uid, self._gid)
        return self._entry(reply, _HDR, inode.nodeid, st)

    def _link(self, nodeid: int, request: SgReader, reply: SgWriter) -> int:
        (oldnodeid,) = request.read_struct(LINK_IN)
        self._body_len -= LINK_IN.size
        name = parse_name(self._body(request))
        inode, st = self.fs.link(oldnodeid, nodeid, name, (self._uid, self._gid))
        return self._entry(reply, _HDR, inode.nodeid, st)

    def _unlink(self, nodeid: int, request: SgReader, _reply: SgWriter) -> int:
        self.fs.unlink(nodeid, parse_name(self._body(request)), (self._uid, self._gid))
        return 0

    def _rmdir(self, nodeid: int, request: SgReader, _reply: SgWriter) -> int:
        self.fs.rmdir(nodeid, parse_name(self._body(request)), (self._uid, self._gid))
        return 0

    def _rename(self, nodeid: int, request: SgReader, _reply: SgWriter) -> int:
        (newdir,) = request.read_struct(RENAME_IN)
        self._body_len -= RENAME_IN.size
        old, new = parse_two_names(self._body(request))
        self.fs.rename(nodeid, old, newdir, new, 0, (self._uid, self._gid))
        return 0

    def _rename2(self, nodeid: int, request: SgReader, _reply: SgWriter) -> int:
        newdir, flags, _ = request.read_struct(RENAME2_IN)
        self._body_len -= RENAME2_IN.size
        if flags & ~_RENAME_FLAGS:
            raise OSError(errno.EINVAL, f"unknown rename flags {flags:#x}")
        if flags & RENAME_WHITEOUT:
            # A whiteout is a 0/0 character device: device nodes are never made in the share.
            raise OSError(errno.EINVAL, "RENAME_WHITEOUT is not supported")
        old, new = parse_two_names(self._body(request))
        self.fs.rename(nodeid, old, newdir, new, flags, (self._uid, self._gid))
        return 0

    # --- files -----------------------------------------------------------------------------

    def _open(self, nodeid: int, request: SgReader, reply: SgWriter) -> int:
        flags, kill = request.read_struct(OPEN_IN)
        fh, open_flags = self.fs.open(nodeid, flags, (self._uid, self._gid))
        if kill & OPEN_KILL_SUIDGID and flags & os.O_TRUNC:
            self.fs.kill_suidgid(nodeid, fh)
        reply.pack_at(OPEN_OUT, _HDR, fh, open_flags, 0)
        return OPEN_OUT.size

    def _create(self, nodeid: int, request: SgReader, reply: SgWriter) -> int:
        flags, mode, _umask, kill = request.read_struct(CREATE_IN)
        self._body_len -= CREATE_IN.size
        name = parse_name(self._body(request))
        inode, st, fh, open_flags = self.fs.create(nodeid, name, flags, mode, self._uid, self._gid)
        if kill & OPEN_KILL_SUIDGID and flags & os.O_TRUNC:
            self.fs.kill_suidgid(inode.nodeid, fh)
            st = self.fs.getattr(inode.nodeid)
        self._entry(reply, _HDR, inode.nodeid, st)
        reply.pack_at(OPEN_OUT, _HDR + ENTRY_OUT.size, fh, open_flags, 0)
        return ENTRY_OUT.size + OPEN_OUT.size

    def _tmpfile(self, nodeid: int, request: SgReader, reply: SgWriter) -> int:
        # Same layout as CREATE; the name the kernel sends ("/") means nothing and is ignored.
        flags, mode, _umask, _ = request.read_struct(CREATE_IN)
        inode, st, fh, open_flags = self.fs.tmpfile(nodeid, flags, mode, self._uid, self._gid)
        self._entry(reply, _HDR, inode.nodeid, st)
        reply.pack_at(OPEN_OUT, _HDR + ENTRY_OUT.size, fh, open_flags, 0)
        return ENTRY_OUT.size + OPEN_OUT.size

    def _read(self, nodeid: int, request: SgReader, reply: SgWriter) -> int:
        fh, offset, size, _, _, _, _ = request.read_struct(READ_IN)
        size = min(size, reply.capacity - _HDR, abi.MAX_WRITE)
        return self.fs.read(nodeid, fh, offset, reply.views(_HDR, size))

    def _write(self, nodeid: int, request: SgReader, reply: SgWriter) -> int:
        fh, offset, size, write_flags, _, _, _ = request.read_struct(WRITE_IN)
        written = self.fs.write(nodeid, fh, offset, request.take_views(size))
        if write_flags & WRITE_KILL_SUIDGID:
            self.fs.kill_suidgid(nodeid, fh)
        reply.pack_at(WRITE_OUT, _HDR, written, 0)
        return WRITE_OUT.size

    def _flush(self, nodeid: int, request: SgReader, _reply: SgWriter) -> int:
        fh, _, _, lock_owner = request.read_struct(FLUSH_IN)
        self.fs.flush(nodeid, fh, lock_owner)
        return 0

    def _release(self, nodeid: int, request: SgReader, _reply: SgWriter) -> int:
        fh, _, _, _ = request.read_struct(RELEASE_IN)
        self.fs.release(nodeid, fh)
        return 0

    # --- locks -----------------------------------------------------------------------------

    def _getlk(self, nodeid: int, request: SgReader, reply: SgWriter) -> int:
        fh, owner, start, end, kind, _pid, _flags, _ = request.read_struct(LK_IN)
        reply.pack_at(LK_OUT, _HDR, *self.fs.getlk(nodeid, fh, owner, start, end, kind))
        return LK_OUT.size

    def _setlk(self, nodeid: int, request: SgReader, _reply: SgWriter) -> int:
        fh, owner, start, end, kind, pid, flags, _ = request.read_struct(LK_IN)
        self.fs.setlk(nodeid, fh, owner, start, end, kind, pid, bool(flags & LK_FLOCK))
        return 0

    def _setlkw(self, nodeid: int, request: SgReader, reply: SgWriter) -> int:
        fh, owner, start, end, kind, pid, flags, _ = request.read_struct(LK_IN)
        wait = Deferred(self._unique, reply)
        flock = bool(flags & LK_FLOCK)
        if self.fs.setlk(nodeid, fh, owner, start, end, kind, pid, flock, wait):
            return 0
        defer(wait)
        return _DEFER

    def _fsync(self, nodeid: int, request: SgReader, _reply: SgWriter) -> int:
        fh, flags, _ = request.read_struct(FSYNC_IN)
        self.fs.fsync(nodeid, fh, bool(flags & FSYNC_FDATASYNC))
        return 0

    def _fallocate(self, nodeid: int, request: SgReader, _reply: SgWriter) -> int:
        fh, offset, length, mode, _ = request.read_struct(FALLOCATE_IN)
        self.fs.fallocate(nodeid, fh, mode, offset, length)
        return 0

    def _lseek(self, nodeid: int, request: SgReader, reply: SgWriter) -> int:
        fh, offset, whence, _ = request.read_struct(LSEEK_IN)
        reply.pack_at(LSEEK_OUT, _HDR, self.fs.lseek(nodeid, fh, offset, whence))
        return LSEEK_OUT.size

    def _copy_file_range(self, nodeid: int, request: SgReader, reply: SgWriter) -> int:
        fh_in, off_in, nodeid_out, fh_out, off_out, length, flags = request.read_struct(
            COPY_FILE_RANGE_IN
        )
        if flags:
            raise OSError(errno.EINVAL, "copy_file_range flags must be 0")
        # The reply's size field is 32 bits wide.
        copied = self.fs.copy_file_range(
            nodeid, fh_in, off_in, nodeid_out, fh_out, off_out, min(length, 1 << 30)
        )
        reply.pack_at(WRITE_OUT, _HDR, copied, 0)
        return WRITE_OUT.size

    # --- extended attributes ---------------------------------------------------------------

    def _sized(self, reply: SgWriter, data: bytes, size: int) -> int:
        """The xattr size probe: ``size`` 0 asks for the length only; too small is ERANGE."""
        if size == 0:
            reply.pack_at(GETXATTR_OUT, _HDR, len(data), 0)
            return GETXATTR_OUT.size
        if len(data) > size:
            raise OSError(errno.ERANGE, f"{len(data)} bytes do not fit in {size}")
        if len(data) > reply.capacity - _HDR:
            raise OSError(errno.E2BIG, "xattr larger than the reply buffer")
        reply.write_at(_HDR, data)
        return len(data)

    def _getxattr(self, nodeid: int, request: SgReader, reply: SgWriter) -> int:
        size, _ = request.read_struct(GETXATTR_IN)
        self._body_len -= GETXATTR_IN.size
        name = parse_xattr_name(self._body(request))
        return self._sized(reply, self.fs.getxattr(nodeid, name), size)

    def _listxattr(self, nodeid: int, request: SgReader, reply: SgWriter) -> int:
        size, _ = request.read_struct(GETXATTR_IN)
        names = b"".join(n + b"\0" for n in self.fs.listxattr(nodeid))
        if len(names) > XATTR_LIST_MAX:
            raise OSError(errno.E2BIG, "xattr list too long")
        return self._sized(reply, names, size)

    def _setxattr(self, nodeid: int, request: SgReader, _reply: SgWriter) -> int:
        # The 8-byte compat fuse_setxattr_in: SETXATTR_EXT is never granted.
        size, flags = request.read_struct(SETXATTR_IN)
        self._body_len -= SETXATTR_IN.size
        body = self._body(request)
        name = parse_xattr_name(body)
        start = len(name) + 1
        if size > XATTR_SIZE_MAX:
            raise OSError(errno.E2BIG, "xattr value too large")
        if len(body) < start + size:
            raise ProtocolError(f"setxattr value shorter than {size} bytes")
        self.fs.setxattr(nodeid, name, body[start : start + size], flags, (self._uid, self._gid))
        return 0

    def _removexattr(self, nodeid: int, request: SgReader, _reply: SgWriter) -> int:
        name = parse_xattr_name(self._body(request))
        self.fs.removexattr(nodeid, name, (self._uid, self._gid))
        return 0

    def _ioctl(self, _nodeid: int, request: SgReader, _reply: SgWriter) -> int:
        request.read_struct(IOCTL_IN)
        # No ioctl is passed through to host files (crosvm's are ChromeOS-specific).
        raise OSError(errno.ENOTTY, "no ioctls are supported")

    def _syncfs(self, nodeid: int, _request: SgReader, _reply: SgWriter) -> int:
        self.fs.syncfs(nodeid)
        return 0

    # --- directories -----------------------------------------------------------------------

    def _opendir(self, nodeid: int, request: SgReader, reply: SgWriter) -> int:
        request.read_struct(OPEN_IN)
        fh, open_flags = self.fs.opendir(nodeid, (self._uid, self._gid))
        reply.pack_at(OPEN_OUT, _HDR, fh, open_flags, 0)
        return OPEN_OUT.size

    def _releasedir(self, nodeid: int, request: SgReader, _reply: SgWriter) -> int:
        fh, _, _, _ = request.read_struct(RELEASE_IN)
        self.fs.releasedir(nodeid, fh)
        return 0

    def _fsyncdir(self, nodeid: int, request: SgReader, _reply: SgWriter) -> int:
        fh, flags, _ = request.read_struct(FSYNC_IN)
        self.fs.fsyncdir(nodeid, fh, bool(flags & FSYNC_FDATASYNC))
        return 0

    def _readdir(self, nodeid: int, request: SgReader, reply: SgWriter) -> int:
        fh, offset, size, _, _, _, _ = request.read_struct(READ_IN)
        entries = self.fs.readdir(nodeid, fh, offset)
        budget = min(size, reply.capacity - _HDR)
        out = bytearray()
        for index in range(offset, len(entries)):
            entry = entries[index]
            if entry is None:
                continue  # hidden by the allowlist since the listing was taken
            name, ino, dtype = entry
            rec = abi.dirent_size(len(name))
            if len(out) + rec > budget:
                break
            start = len(out)
            out += DIRENT.pack(ino, index + 1, len(name), dtype)
            out += name
            out += bytes(start + rec - len(out))
        reply.write_at(_HDR, out)
        return len(out)

    def _readdirplus(self, parent: int, request: SgReader, reply: SgWriter) -> int:
        fh, offset, size, _, _, _, _ = request.read_struct(READ_IN)
        fs = self.fs
        entries = fs.readdir(parent, fh, offset)
        caller = (self._uid, self._gid)
        budget = max(0, min(size, reply.capacity - _HDR))
        # Built in a zeroed local buffer (padding and the dot entries' entry_out stay zero),
        # then copied into the reply once.
        buf = bytearray(budget)
        e_s, e_ns = self._entry_valid
        a_s, a_ns = self._attr_valid
        pack_entry = ENTRY_OUT.pack_into
        pack_dirent = DIRENT.pack_into
        attr_values = self._attr_values
        used = 0
        for index in range(offset, len(entries)):
            entry = entries[index]
            if entry is None:
                continue
            name, ino, dtype = entry
            namelen = len(name)
            rec = abi.direntplus_size(namelen)
            # Check the fit before the lookup: every emitted nodeid is a lookup to FORGET.
            if used + rec > budget:
                break
            if name != b"." and name != b"..":
                try:
                    inode, st = fs.lookup_entry(parent, name, caller)
                except FileNotFoundError:
                    continue  # removed since the listing was taken
                except PermissionError:
                    pass  # not searchable by the caller: a name without entry_out (nodeid 0)
                except OSError:
                    if used:
                        break  # send what we have; the error shows up on the next call
                    raise
                else:
                    ino = st.st_ino
                    pack_entry(buf, used, inode.nodeid, 0, e_s, a_s, e_ns, a_ns, *attr_values(st))
            dpos = used + _ENTRY_SIZE
            pack_dirent(buf, dpos, ino, index + 1, namelen, dtype)
            dpos += _DIRENT_SIZE
            buf[dpos : dpos + namelen] = name
            used += rec
        reply.write_at(_HDR, memoryview(buf)[:used])
        return used


def _op_name(opcode: int) -> str:
    try:
        return Opcode(opcode).name
    except ValueError:
        return f"opcode {opcode}"
