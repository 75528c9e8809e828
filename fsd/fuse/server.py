"""The FUSE server: one request's bytes in, one reply's bytes out, errors turned into errnos.

Transports (virtqueues, ``/dev/fuse``) hand :meth:`FuseServer.handle` a request and the space
for its reply. The request is decoded once (:func:`fsd.fuse.requests.decode`) into a
:class:`~fsd.fuse.requests.Request`, which :meth:`FuseServer.execute` serves through a
:class:`~fsd.fuse.filesystem.Filesystem`, encoding the answer. Plugins get between the two
(``fsd.hooks_fuse``) and read the same decoded request. READ, most of what a guest sends,
is decoded by :meth:`~FuseServer.handle` itself and handed to the same handler, without the
generic dispatch (docs/performance.md measures what that saves per request).

``FuseServer._errno`` (for :meth:`~FuseServer.execute`, :meth:`~FuseServer.refuse` and the
READ path) is the one place where exceptions become errnos: ``OSError`` → its errno, a
malformed request → its errno (EINVAL), a value out of range → EINVAL, anything else → EIO and
a log line. Nothing escapes :meth:`~FuseServer.handle`.

The server keeps no per-request state: everything about a request is in its ``Request``.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import threading
from collections.abc import Callable
from typing import Final, Literal, cast

from fsd.fuse import abi
from fsd.fuse.abi import (
    ATTR_SUBMOUNT,
    DIRENT,
    ENTRY_OUT,
    FATTR_KILL_SUIDGID,
    FSYNC_FDATASYNC,
    GETXATTR_OUT,
    IN_HEADER,
    INIT_OUT,
    LK_FLOCK,
    LK_OUT,
    LSEEK_OUT,
    OPEN_KILL_SUIDGID,
    OPEN_OUT,
    OUT_HEADER,
    READ_IN,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    RENAME_WHITEOUT,
    SETXATTR_ACL_KILL_SGID,
    STATFS_OUT,
    STATX_BASIC_STATS,
    STATX_BTIME,
    STATX_OUT,
    WRITE_KILL_SUIDGID,
    WRITE_OUT,
    XATTR_LIST_MAX,
    InitFlag,
    Opcode,
    op_name,
)
from fsd.fuse.codec import (
    attr_values,
    decode_device,
    fuse_attr,
    mapped_attr_values,
    mapped_fuse_attr,
    split_timeout,
)
from fsd.fuse.deferred import Deferred, defer
from fsd.fuse.errors import HiddenByAllowlist, ProtocolError
from fsd.fuse.filesystem import Filesystem, SetattrArgs
from fsd.fuse.replies import DEFERRED, NO_REPLY, write_header, write_reply
from fsd.fuse.requests import MalformedRequest, Request, decode, decoders_for
from fsd.fuse.session import FuseSession
from fsd.fuse.stats import SLOTS, RequestStats
from fsd.sgbuf import BufferTooShort, FourBuffers, Segments, capacity, four_segments, views

__all__ = ["CONCURRENT", "FuseServer", "Transport"]

log = logging.getLogger("fsd.fuse")

Transport = Literal["vhost-user", "dev-fuse"]
Payload = bytes | bytearray | memoryview | int
"""What a handler returns: the reply's payload (the server writes the header before it); or
the length of a payload it wrote in place after the header (READ); or
:data:`~fsd.fuse.replies.NO_REPLY` / :data:`~fsd.fuse.replies.DEFERRED`."""
Handler = Callable[[Request, Segments], Payload]
"""Serves one decoded request; gets the reply's memory (READ reads into it, SETLKW keeps it)."""

_HDR: Final = OUT_HEADER.size
_IN_HDR: Final = IN_HEADER.size
_unpack_in_header: Final = IN_HEADER.unpack_from
_READ: Final = int(Opcode.READ)
_OPCODE_LOW_BYTE: Final = 4  # fuse_in_header.opcode is the little-endian u32 after len
#: in_header.len of every READ: the header and a fuse_read_in.
_READ_LEN: Final = IN_HEADER.size + READ_IN.size
_READ_IN_SIZE: Final = READ_IN.size
_MAX_READ: Final = abi.MAX_WRITE  # the most the guest is told it may read at once
_unpack_read_in: Final = READ_IN.unpack_from
_NO_REPLY_OPS: Final = frozenset(
    {Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.INTERRUPT, Opcode.NOTIFY_REPLY}
)
#: Requests on an open file that run outside the server lock, concurrently with any other
#: request: the filesystem keeps the handle open for their duration (fuse.filesystem says which of
#: its operations must be thread-safe). Their syscalls are the ones that wait on the disk.
CONCURRENT: Final = frozenset(
    {Opcode.READ, Opcode.WRITE, Opcode.FSYNC, Opcode.FALLOCATE, Opcode.LSEEK,
     Opcode.COPY_FILE_RANGE}
)  # fmt: skip
_EMPTY: Final = b""
_SUBMOUNT_FLAGS: Final = struct.pack("<I", ATTR_SUBMOUNT)
_pack_header: Final = OUT_HEADER.pack_into
_pack_entry: Final = ENTRY_OUT.pack
_ENTRY_HEAD: Final = struct.Struct("<QQQQII")  # nodeid, generation, entry and attr valid
_pack_entry_head: Final = _ENTRY_HEAD.pack
_ATTR_OUT_HEAD: Final = struct.Struct("<QII")  # attr valid, its nanoseconds, padding
_pack_write_out: Final = WRITE_OUT.pack
_ENTRY_REPLY: Final = OUT_HEADER.size + ENTRY_OUT.size
_OPEN_REPLY: Final = OUT_HEADER.size + OPEN_OUT.size
#: Reply space a request must come with before it is acted on (it creates client state).
_MIN_REPLY: Final[dict[int, int]] = {
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

    def __init__(self, fs: Filesystem, *, transport: Transport = "vhost-user") -> None:
        self.fs = fs
        self.transport = transport
        config = fs.config
        self.session = FuseSession(config.init_flags, config.withheld_init_flags)
        #: The argument layouts of this session (SETXATTR's grows with SETXATTR_EXT).
        self.decoders = decoders_for(0)
        self._entry_valid = split_timeout(config.entry_timeout)
        self._attr_valid = split_timeout(config.attr_timeout)
        self._negative_valid = split_timeout(config.negative_timeout)
        # Owners in replies: host ids as they are, or through --uid-map/--gid-map.
        owners = config.owner_to_client
        self._attr_values = attr_values if owners is None else mapped_attr_values(*owners)
        self._fuse_attr = fuse_attr if owners is None else mapped_fuse_attr(*owners)
        # fuse_attr_out and fuse_entry_out are these heads before a fuse_attr.
        a_s, a_ns = self._attr_valid
        self._attr_out_head = _ATTR_OUT_HEAD.pack(a_s, a_ns, 0)
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
        #: What is served before INIT (only INIT; anything else is EIO), then everything.
        self._before_init: dict[int, Handler] = {Opcode.INIT: self._init}
        #: Held around every request but the CONCURRENT ones: the tables see one at a time.
        self._lock = threading.Lock()
        #: Requests and errors per opcode, for the status view.
        self.stats = RequestStats()
        self._submounts = False
        self._table = self._before_init
        self._missing = errno.EIO
        #: Whether :meth:`handle` serves READ directly (from INIT to DESTROY).
        self._direct_reads = False

    # --- the entry points ------------------------------------------------------------------

    def handle(self, request: Segments, reply: Segments) -> int:
        """Serve one FUSE request whose bytes are in ``request`` (in_header + args + data).

        Write the reply (out_header + payload) into ``reply`` from offset 0 and return its
        length; or :data:`~fsd.fuse.replies.NO_REPLY` (FORGET, BATCH_FORGET, INTERRUPT, DESTROY
        on vhost-user, and requests too short to answer); or :data:`~fsd.fuse.replies.DEFERRED`:
        the reply comes later, through the ``Deferred`` that ``take_deferred()`` then returns
        on this thread (SETLKW). Never raises.
        """
        if self._direct_reads and request:
            # READ, most of what a guest sends, is decoded and served here, without the
            # generic decode and dispatch (tables, lock, reply-space checks it does not need):
            # in the daemon every request finds the caches cold, and what they run costs ~3 µs
            # a READ there (docs/performance.md). Only the two layouts transports give it,
            # Linux's virtio_fs (the header and fuse_read_in in segments of their own) and
            # /dev/fuse (one buffer); anything else, malformed included, takes the general
            # path, which says what is wrong. The handler, statistics and errnos are
            # execute()'s.
            first = request[0]
            # The opcode's low byte first: other requests pay one index, not a header unpack.
            if len(first) >= _IN_HDR and first[_OPCODE_LOW_BYTE] == _READ:
                length, opcode, unique, nodeid, uid, gid, pid, _, _ = _unpack_in_header(first)
                if opcode == _READ and length == _READ_LEN:
                    args = None
                    if len(first) == _READ_LEN and len(request) == 1:
                        args = _unpack_read_in(first, _IN_HDR)
                    elif (
                        len(first) == _IN_HDR
                        and len(request) == 2
                        and len(request[1]) == _READ_IN_SIZE
                    ):
                        args = _unpack_read_in(request[1])
                    if args is not None:
                        return self._serve_read(
                            Request(opcode, unique, nodeid, uid, gid, pid, args), reply
                        )
        try:
            req = decode(request, self.decoders)
        except (MalformedRequest, BufferTooShort) as exc:
            return self.refuse(exc, reply)
        return self.execute(req, reply)

    def handle_four(self, buffers: FourBuffers) -> int:
        """Serve a request given as places in one memory region (a virtqueue's most common
        chain, see :data:`~fsd.sgbuf.FourBuffers`), as :meth:`handle` would.

        A READ is read where it lies: its header and arguments unpacked from the region, no
        view or list built for them (with the ring's ``pop_four``, ~1.5 µs less per READ when
        the caches are cold, as they are in the daemon). Everything else is decoded and
        executed from segments, as :meth:`handle` does.
        """
        _, region, o0, l0, o1, l1, o2, l2, o3, l3 = buffers
        # The lengths first: the opcode's byte is read only inside a whole header.
        if (
            l0 == _IN_HDR and l1 == _READ_IN_SIZE and self._direct_reads
            and region[o0 + _OPCODE_LOW_BYTE] == _READ
        ):  # fmt: skip
            length, opcode, unique, nodeid, uid, gid, pid, _, _ = _unpack_in_header(region, o0)
            if opcode == _READ and length == _READ_LEN:
                req = Request(opcode, unique, nodeid, uid, gid, pid, _unpack_read_in(region, o1))
                return self._serve_read(req, [region[o2 : o2 + l2], region[o3 : o3 + l3]])
        # Decoded and executed here, not through handle(): its READ check would be done twice.
        request, reply = four_segments(buffers)
        try:
            req = decode(request, self.decoders)
        except (MalformedRequest, BufferTooShort) as exc:
            return self.refuse(exc, reply)
        return self.execute(req, reply)

    def _serve_read(self, req: Request, reply: Segments) -> int:
        """READ's own path (see :meth:`handle`): ``execute()``'s handler, statistics and
        errnos, without its tables, lock and reply-space check."""
        self.stats.requests[_READ] += 1
        try:
            size = self._read(req, reply)
            first = reply[0]
            if len(first) >= _HDR:  # write_header()'s common case, inline
                _pack_header(first, 0, _HDR + size, 0, req.unique)
            else:
                write_header(reply, _HDR + size, req.unique)
        except Exception as exc:
            return self.error_reply(reply, self._failure(req, exc), req.unique)
        return _HDR + size

    def execute(self, req: Request, reply: Segments) -> int:
        """Serve a decoded request (see :meth:`handle`); its outcome is left in ``req.error``
        and ``req.moved``. Never raises.

        Safe to call from several threads: requests run one at a time under the server's
        lock, except the data operations on open files (:data:`CONCURRENT`), which the
        filesystem serves concurrently (a slow store then holds up only its own request).
        """
        opcode = req.opcode
        lock = None if opcode in CONCURRENT else self._lock
        if lock is not None:
            lock.acquire()
        try:
            self.stats.requests[opcode if opcode < SLOTS else 0] += 1
            handler = self._table.get(opcode)
            if handler is None:
                raise OSError(self._missing, "not implemented" if self._missing == errno.ENOSYS
                              else "request before INIT")  # fmt: skip
            if opcode in _MIN_REPLY and capacity(reply) < _MIN_REPLY[opcode]:
                # Checked before acting: an open handle or a lookup count whose reply cannot
                # be written would never be released by the client.
                raise ProtocolError(f"{capacity(reply)} bytes of reply space are too few")
            result = handler(req, reply)
            if isinstance(result, int):
                if result < 0:
                    return result  # NO_REPLY, DEFERRED
                write_header(reply, _HDR + result, req.unique)  # READ: the payload is in place
                return _HDR + result
            return write_reply(reply, req.unique, 0, result)
        except Exception as exc:
            error = self._failure(req, exc)
        finally:
            if lock is not None:
                lock.release()
        if opcode in _NO_REPLY_OPS:
            return NO_REPLY
        return self.error_reply(reply, error, req.unique)

    def _failure(self, req: Request, exc: Exception) -> int:
        """Record why ``req`` failed (its ``error``, the statistics, a log line); the errno."""
        opcode = req.opcode
        req.error = error = self._errno(exc, opcode, req.nodeid)
        self.stats.errors[opcode if opcode < SLOTS else 0] += 1
        return error

    def refuse(self, exc: MalformedRequest | BufferTooShort, reply: Segments) -> int:
        """Answer a request that could not be decoded (see :func:`fsd.fuse.requests.decode`)."""
        self.stats.malformed += 1
        if not isinstance(exc, MalformedRequest):
            log.warning("dropping a request shorter than fuse_in_header")
            return NO_REPLY
        error = self._errno(exc, exc.opcode, exc.nodeid)
        if exc.opcode in _NO_REPLY_OPS:
            return NO_REPLY
        return self.error_reply(reply, error, exc.unique)

    def error_reply(self, reply: Segments, error: int, unique: int) -> int:
        """Write an ``-error`` reply to ``unique``; its length (NO_REPLY if it cannot fit)."""
        try:
            return write_reply(reply, unique, error)
        except BufferTooShort:
            log.warning("no room for a reply to unique %d", unique)
            return NO_REPLY

    @staticmethod
    def _errno(exc: Exception, opcode: int, nodeid: int) -> int:
        """The errno for ``exc``, logged as it deserves: the one place errors become errnos."""
        if isinstance(exc, OSError):
            error = exc.errno or errno.EIO
            if error == errno.ENOSYS or opcode in _NO_REPLY_OPS:
                log.debug("%s nodeid %d: %s", op_name(opcode), nodeid, exc)
            return error
        if isinstance(exc, (ProtocolError, BufferTooShort)):
            log.warning("malformed %s (nodeid %d): %s", op_name(opcode), nodeid, exc)
            return exc.errno if isinstance(exc, ProtocolError) else errno.EINVAL
        if isinstance(exc, (OverflowError, ValueError)):
            # An offset, size or id beyond what the host's calls take (e.g. 2**64 - 1).
            log.warning("%s nodeid %d: value out of range: %s", op_name(opcode), nodeid, exc)
            return errno.EINVAL
        log.error("internal error serving %s nodeid %d", op_name(opcode), nodeid, exc_info=exc)
        return errno.EIO

    # --- helpers ---------------------------------------------------------------------------

    def _entry(self, nodeid: int, st: os.stat_result) -> bytes:
        e_s, e_ns = self._entry_valid
        a_s, a_ns = self._attr_valid
        attr = self._fuse_attr(st)
        if self._submounts and self.fs.is_submount(nodeid):
            attr = attr[:-4] + _SUBMOUNT_FLAGS  # fuse_attr.flags is its last field
        return _pack_entry_head(nodeid, 0, e_s, a_s, e_ns, a_ns) + attr

    def _attr(self, st: os.stat_result) -> bytes:
        return self._attr_out_head + self._fuse_attr(st)

    # --- session ---------------------------------------------------------------------------

    def _init(self, req: Request, _reply: Segments) -> Payload:
        major, minor, readahead, flags = req.args
        if major < abi.KERNEL_VERSION:
            raise OSError(errno.EPROTO, f"unsupported FUSE major version {major}")
        if self.session.initialized:
            # A guest rebooted without unmounting: start from a clean table.
            self.fs.destroy()
        values = self.session.negotiate(major, minor, readahead, flags)
        if self.session.initialized:
            self._table, self._missing = self._handlers, errno.ENOSYS
            self._direct_reads = True
        self.decoders = decoders_for(self.session.flags)
        # Mount points in the share get their own mount in the client, if both sides agree.
        self._submounts = self.fs.config.announce_submounts and bool(
            self.session.flags & InitFlag.SUBMOUNTS
        )
        granted = values[3] | (values[10] << 32)
        log.info(
            "FUSE session: kernel %d.%d, replied %d.%d, flags %#x",
            major,
            minor,
            values[0],
            values[1],
            granted,
            extra={"fuse_minor": values[1], "kernel_minor": minor, "flags": granted},
        )
        size = self.session.init_out_size() if self.session.initialized else INIT_OUT.size
        return INIT_OUT.pack(*values)[:size]

    def reset(self) -> None:
        """End the session as DESTROY does: drop everything the client held and serve nothing
        but INIT until the next one (a new front-end on a reconnecting daemon, say)."""
        self.fs.destroy()
        self.session.reset()
        self.decoders = decoders_for(0)
        self._table, self._missing = self._before_init, errno.EIO
        self._direct_reads = False

    def _destroy(self, _req: Request, _reply: Segments) -> Payload:
        self.reset()
        return NO_REPLY if self.transport == "vhost-user" else _EMPTY

    def _interrupt(self, req: Request, _reply: Segments) -> Payload:
        # Only a waiting SETLKW can be interrupted; every other request ran to completion.
        self.fs.interrupt(req, req.args[0])
        return NO_REPLY

    # --- inodes ----------------------------------------------------------------------------

    def _lookup(self, req: Request, _reply: Segments) -> Payload:
        try:
            nodeid, st = self.fs.lookup(req, req.nodeid, req.args[0])
        except FileNotFoundError as exc:
            if isinstance(exc, HiddenByAllowlist) or not any(self._negative_valid):
                raise
            n_s, n_ns = self._negative_valid
            return _pack_entry(0, 0, n_s, 0, n_ns, 0, *(0,) * 16)
        return self._entry(nodeid, st)

    def _forget(self, req: Request, _reply: Segments) -> Payload:
        self.fs.forget(req, req.nodeid, req.args[0])
        return NO_REPLY

    def _batch_forget(self, req: Request, _reply: Segments) -> Payload:
        forget = self.fs.forget
        for nodeid, nlookup in req.args[0]:
            forget(req, nodeid, nlookup)
        return NO_REPLY

    def _getattr(self, req: Request, _reply: Segments) -> Payload:
        return self._attr(self.fs.getattr(req, req.nodeid))

    def _statx(self, req: Request, _reply: Segments) -> Payload:
        """GETATTR plus the birth time, which is all Linux asks STATX for (it sends it only when
        a caller wants btime); every basic field is always filled, so the kernel caches them."""
        st, btime = self.fs.statx(req, req.nodeid)
        (ino, size, blocks, a_s, m_s, c_s, a_ns, m_ns, c_ns, mode, nlink, uid, gid, _rdev, blksize,
         _flags) = self._attr_values(st)  # fmt: skip
        mask = STATX_BASIC_STATS if btime is None else STATX_BASIC_STATS | STATX_BTIME
        b_s, b_ns = btime or (0, 0)
        v_s, v_ns = self._attr_valid
        return STATX_OUT.pack(
            v_s, v_ns, 0,
            mask, blksize, 0, nlink, uid, gid, mode & 0xFFFF, ino, size, blocks, 0,
            a_s, a_ns, b_s, b_ns, c_s, c_ns, m_s, m_ns,
            os.major(st.st_rdev), os.minor(st.st_rdev), 0, 0,
        )  # fmt: skip

    def _setattr(self, req: Request, _reply: Segments) -> Payload:
        attrs = cast(SetattrArgs, req.args)  # what fuse.requests decodes SETATTR into
        st = self.fs.setattr(req, req.nodeid, attrs)
        if attrs.valid & FATTR_KILL_SUIDGID:
            self.fs.kill_suidgid(req, req.nodeid, None)
            st = self.fs.getattr(req, req.nodeid)
        return self._attr(st)

    def _readlink(self, req: Request, _reply: Segments) -> Payload:
        return self.fs.readlink(req, req.nodeid)

    def _access(self, req: Request, _reply: Segments) -> Payload:
        self.fs.access(req, req.nodeid, req.args[0])
        return _EMPTY

    def _statfs(self, req: Request, _reply: Segments) -> Payload:
        sv = self.fs.statfs(req, req.nodeid)
        return STATFS_OUT.pack(
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

    # --- names -----------------------------------------------------------------------------

    def _mkdir(self, req: Request, _reply: Segments) -> Payload:
        mode, umask, name = req.args
        return self._entry(*self.fs.mkdir(req, req.nodeid, name, mode, umask))

    def _mknod(self, req: Request, _reply: Segments) -> Payload:
        mode, rdev, umask, _, name = req.args
        rdev = decode_device(rdev)
        return self._entry(*self.fs.mknod(req, req.nodeid, name, mode, rdev, umask))

    def _symlink(self, req: Request, _reply: Segments) -> Payload:
        name, target = req.args
        return self._entry(*self.fs.symlink(req, req.nodeid, name, target))

    def _link(self, req: Request, _reply: Segments) -> Payload:
        oldnodeid, newname = req.args
        return self._entry(*self.fs.link(req, oldnodeid, req.nodeid, newname))

    def _unlink(self, req: Request, _reply: Segments) -> Payload:
        self.fs.unlink(req, req.nodeid, req.args[0])
        return _EMPTY

    def _rmdir(self, req: Request, _reply: Segments) -> Payload:
        self.fs.rmdir(req, req.nodeid, req.args[0])
        return _EMPTY

    def _rename(self, req: Request, _reply: Segments) -> Payload:
        newdir, old, new = req.args
        self.fs.rename(req, req.nodeid, old, newdir, new, 0)
        return _EMPTY

    def _rename2(self, req: Request, _reply: Segments) -> Payload:
        newdir, flags, _, old, new = req.args
        if flags & ~_RENAME_FLAGS:
            raise OSError(errno.EINVAL, f"unknown rename flags {flags:#x}")
        # RENAME_WHITEOUT too (overlayfs): the filesystem leaves a 0/0 character device.
        self.fs.rename(req, req.nodeid, old, newdir, new, flags)
        return _EMPTY

    # --- files -----------------------------------------------------------------------------

    def _open(self, req: Request, _reply: Segments) -> Payload:
        flags, kill = req.args
        fh, open_flags = self.fs.open(req, req.nodeid, flags)
        if kill & OPEN_KILL_SUIDGID and flags & os.O_TRUNC:
            self.fs.kill_suidgid(req, req.nodeid, fh)
        return OPEN_OUT.pack(fh, open_flags, 0)

    def _create(self, req: Request, _reply: Segments) -> Payload:
        flags, mode, umask, kill, name = req.args
        (nodeid, st), (fh, open_flags) = self.fs.create(req, req.nodeid, name, flags, mode, umask)
        if kill & OPEN_KILL_SUIDGID and flags & os.O_TRUNC:
            self.fs.kill_suidgid(req, nodeid, fh)
            st = self.fs.getattr(req, nodeid)
        return self._entry(nodeid, st) + OPEN_OUT.pack(fh, open_flags, 0)

    def _tmpfile(self, req: Request, _reply: Segments) -> Payload:
        flags, mode, umask, _ = req.args
        (nodeid, st), (fh, open_flags) = self.fs.tmpfile(req, req.nodeid, flags, mode, umask)
        return self._entry(nodeid, st) + OPEN_OUT.pack(fh, open_flags, 0)

    def _read(self, req: Request, reply: Segments) -> int:
        fh, offset, size, _, _, _, _ = req.args
        if size > _MAX_READ:
            size = _MAX_READ
        # The reply's first `size` payload bytes, the host file read straight into them.
        # Linux's virtio_fs gives the data pages segments of their own after the header's;
        # /dev/fuse one buffer (as does a chain whose pages follow the header in memory).
        first = reply[0]
        if len(first) == _HDR and len(reply) == 2 and len(reply[1]) <= size:
            into = reply[1:]
        elif len(reply) == 1:
            into = [first[_HDR : _HDR + size]] if len(first) > _HDR else []
        else:
            into = _payload_views(reply, size)
        req.moved = n = self.fs.read(req, req.nodeid, fh, offset, into) if into else 0
        return n

    def _write(self, req: Request, _reply: Segments) -> Payload:
        fh, offset, _size, write_flags, _, _, data = req.args
        req.moved = written = self.fs.write(req, req.nodeid, fh, offset, data) if data else 0
        if write_flags & WRITE_KILL_SUIDGID:
            self.fs.kill_suidgid(req, req.nodeid, fh)
        return _pack_write_out(written, 0)

    def _flush(self, req: Request, _reply: Segments) -> Payload:
        fh, _, _, lock_owner = req.args
        self.fs.flush(req, req.nodeid, fh, lock_owner)
        return _EMPTY

    def _release(self, req: Request, _reply: Segments) -> Payload:
        self.fs.release(req, req.nodeid, req.args[0])
        return _EMPTY

    # --- locks -----------------------------------------------------------------------------

    def _getlk(self, req: Request, _reply: Segments) -> Payload:
        fh, owner, start, end, kind, _pid, _flags, _ = req.args
        return LK_OUT.pack(*self.fs.getlk(req, req.nodeid, fh, owner, start, end, kind))

    def _setlk(self, req: Request, _reply: Segments) -> Payload:
        fh, owner, start, end, kind, pid, flags, _ = req.args
        flock = bool(flags & LK_FLOCK)
        self.fs.setlk(req, req.nodeid, fh, owner, start, end, kind, pid, flock, None)
        return _EMPTY

    def _setlkw(self, req: Request, reply: Segments) -> Payload:
        fh, owner, start, end, kind, pid, flags, _ = req.args
        wait = Deferred(req.unique, reply)
        flock = bool(flags & LK_FLOCK)
        if self.fs.setlk(req, req.nodeid, fh, owner, start, end, kind, pid, flock, wait):
            return _EMPTY
        defer(wait)
        return DEFERRED

    def _fsync(self, req: Request, _reply: Segments) -> Payload:
        fh, flags, _ = req.args
        self.fs.fsync(req, req.nodeid, fh, bool(flags & FSYNC_FDATASYNC))
        return _EMPTY

    def _fallocate(self, req: Request, _reply: Segments) -> Payload:
        fh, offset, length, mode, _ = req.args
        self.fs.fallocate(req, req.nodeid, fh, mode, offset, length)
        return _EMPTY

    def _lseek(self, req: Request, _reply: Segments) -> Payload:
        fh, offset, whence, _ = req.args
        return LSEEK_OUT.pack(self.fs.lseek(req, req.nodeid, fh, offset, whence))

    def _copy_file_range(self, req: Request, _reply: Segments) -> Payload:
        fh_in, off_in, nodeid_out, fh_out, off_out, length, flags = req.args
        if flags:
            raise OSError(errno.EINVAL, "copy_file_range flags must be 0")
        # The reply's size field is 32 bits wide.
        req.moved = copied = self.fs.copy_file_range(
            req, req.nodeid, fh_in, off_in, nodeid_out, fh_out, off_out, min(length, 1 << 30)
        )
        return _pack_write_out(copied, 0)

    # --- extended attributes ---------------------------------------------------------------

    @staticmethod
    def _sized(reply: Segments, data: bytes, size: int) -> Payload:
        """The xattr size probe: ``size`` 0 asks for the length only; too small is ERANGE."""
        if size == 0:
            return GETXATTR_OUT.pack(len(data), 0)
        if len(data) > size:
            raise OSError(errno.ERANGE, f"{len(data)} bytes do not fit in {size}")
        if len(data) > capacity(reply) - _HDR:
            raise OSError(errno.E2BIG, "xattr larger than the reply buffer")
        return data

    def _getxattr(self, req: Request, reply: Segments) -> Payload:
        size, name = req.args
        return self._sized(reply, self.fs.getxattr(req, req.nodeid, name), size)

    def _listxattr(self, req: Request, reply: Segments) -> Payload:
        names = b"".join(n + b"\0" for n in self.fs.listxattr(req, req.nodeid))
        if len(names) > XATTR_LIST_MAX:
            raise OSError(errno.E2BIG, "xattr list too long")
        return self._sized(reply, names, req.args[0])

    def _setxattr(self, req: Request, _reply: Segments) -> Payload:
        name, value, flags, setxattr_flags = req.args
        kill_sgid = bool(setxattr_flags & SETXATTR_ACL_KILL_SGID)
        self.fs.setxattr(req, req.nodeid, name, value, flags, kill_sgid)
        return _EMPTY

    def _removexattr(self, req: Request, _reply: Segments) -> Payload:
        self.fs.removexattr(req, req.nodeid, req.args[0])
        return _EMPTY

    def _ioctl(self, _req: Request, _reply: Segments) -> Payload:
        # No ioctl is passed through to host files (crosvm's are ChromeOS-specific).
        raise OSError(errno.ENOTTY, "no ioctls are supported")

    def _syncfs(self, req: Request, _reply: Segments) -> Payload:
        self.fs.syncfs(req, req.nodeid)
        return _EMPTY

    # --- directories -----------------------------------------------------------------------

    def _opendir(self, req: Request, _reply: Segments) -> Payload:
        fh, open_flags = self.fs.opendir(req, req.nodeid)
        return OPEN_OUT.pack(fh, open_flags, 0)

    def _releasedir(self, req: Request, _reply: Segments) -> Payload:
        self.fs.releasedir(req, req.nodeid, req.args[0])
        return _EMPTY

    def _fsyncdir(self, req: Request, _reply: Segments) -> Payload:
        fh, flags, _ = req.args
        self.fs.fsyncdir(req, req.nodeid, fh, bool(flags & FSYNC_FDATASYNC))
        return _EMPTY

    def _readdir(self, req: Request, reply: Segments) -> Payload:
        fh, offset, size = req.args[:3]
        entries = self.fs.readdir(req, req.nodeid, fh, offset)
        budget = min(size, capacity(reply) - _HDR)
        out = bytearray()
        for index in range(offset, len(entries)):
            entry = entries[index]
            if entry is None:
                continue  # hidden since the listing was taken
            name, ino, dtype = entry
            rec = abi.dirent_size(len(name))
            if len(out) + rec > budget:
                break
            start = len(out)
            out += DIRENT.pack(ino, index + 1, len(name), dtype)
            out += name
            out += bytes(start + rec - len(out))
        return out

    def _readdirplus(self, req: Request, reply: Segments) -> Payload:
        fh, offset, size = req.args[:3]
        parent = req.nodeid
        fs = self.fs
        entries = fs.readdir(req, parent, fh, offset)
        budget = max(0, min(size, capacity(reply) - _HDR))
        # Built in a zeroed local buffer (padding and the dot entries' entry_out stay zero).
        buf = bytearray(budget)
        entry_out = self._entry
        pack_dirent = DIRENT.pack_into
        lookup = fs.lookup
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
                    nodeid, st = lookup(req, parent, name)
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
                    buf[used : used + _ENTRY_SIZE] = entry_out(nodeid, st)
            dpos = used + _ENTRY_SIZE
            pack_dirent(buf, dpos, ino, index + 1, namelen, dtype)
            dpos += _DIRENT_SIZE
            buf[dpos : dpos + namelen] = name
            used += rec
        return memoryview(buf)[:used]


def _payload_views(reply: Segments, size: int) -> list[memoryview]:
    """Views of the reply's first ``size`` payload bytes (after the header), at most its
    capacity, for the layouts ``_read`` does not take itself (several data segments, a
    header split across segments)."""
    if len(reply[0]) == _HDR:  # Linux's virtio_fs: the data pages are segments of their own
        rest = reply[1:]
        if sum(map(len, rest)) <= size:
            return list(rest)
        return views(rest, 0, size)
    return views(reply, _HDR, max(0, min(size, capacity(reply) - _HDR)))
