"""Build FUSE request bytes and parse reply bytes, as a kernel FUSE client would.

For tests of anything that carries FUSE traffic (the server itself, the vhost-user queues, the
``/dev/fuse`` loop): each request function returns the complete request (``fuse_in_header`` with
the right length, the op's struct, names NUL-terminated), and the ``parse_*`` functions decode
replies. :class:`FuseClient` ties them to a :class:`~fsd.fuse.FuseServer` with a unique counter
and turns error replies into ``OSError``.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterable
from typing import NamedTuple, Protocol

from fsd.fuse import abi
from fsd.fuse.abi import Opcode
from fsd.fuse.deferred import take_deferred
from fsd.fuse.replies import DEFERRED
from fsd.sgbuf import Segments

__all__ = [
    "DEFAULT_INIT_FLAGS",
    "Attr",
    "Dirent",
    "Entry",
    "FuseClient",
    "InitOut",
    "Reply",
    "Submitted",
    "access",
    "batch_forget",
    "copy_file_range",
    "create",
    "destroy",
    "fallocate",
    "flush",
    "forget",
    "fsync",
    "fsyncdir",
    "getattr",
    "getlk",
    "getxattr",
    "init_request",
    "interrupt",
    "link",
    "listxattr",
    "lk",
    "lookup",
    "lseek",
    "mkdir",
    "mknod",
    "open_",
    "opendir",
    "parse_attr_out",
    "parse_direntplus",
    "parse_dirents",
    "parse_entry",
    "parse_init",
    "parse_lk",
    "parse_open",
    "parse_reply",
    "parse_statfs",
    "parse_write",
    "read",
    "readdir",
    "readdirplus",
    "readlink",
    "release",
    "releasedir",
    "removexattr",
    "rename",
    "rename2",
    "request",
    "rmdir",
    "setattr",
    "setlk",
    "setlkw",
    "setxattr",
    "setxattr_ext",
    "statfs",
    "supp_group",
    "symlink",
    "syncfs",
    "unlink",
    "with_extensions",
    "write",
]

#: What Linux 6.1's virtiofs offers in INIT (flags word, INIT_EXT set; flags2 in the high bits).
DEFAULT_INIT_FLAGS = 0x7BFFFFFB | (0xB << 32)


def request(
    opcode: int, unique: int, nodeid: int, body: bytes = b"", *, uid: int = 0, gid: int = 0
) -> bytes:
    """Any request: ``fuse_in_header`` (length filled in) followed by ``body``."""
    length = abi.IN_HEADER.size + len(body)
    return abi.IN_HEADER.pack(length, opcode, unique, nodeid, uid, gid, 0, 0, 0) + body


def with_extensions(data: bytes, extensions: bytes) -> bytes:
    """``data`` (a whole request) with request ``extensions`` appended: the header's length
    and ``total_extlen`` (8-byte units) updated."""
    fields = list(abi.IN_HEADER.unpack_from(data))
    fields[0] += len(extensions)
    fields[7] = len(extensions) // 8
    return abi.IN_HEADER.pack(*fields) + data[abi.IN_HEADER.size :] + extensions


def supp_group(gid: int) -> bytes:
    """The CREATE_SUPP_GROUP extension a client adds to a creating request: one group."""
    return abi.EXT_HEADER.pack(16, abi.EXT_GROUPS) + struct.pack("<II", 1, gid)


def _z(name: bytes | str) -> bytes:
    return os.fsencode(name) + b"\0"


def init_request(
    unique: int,
    *,
    major: int = abi.KERNEL_VERSION,
    minor: int = 38,
    max_readahead: int = 131072,
    flags: int = DEFAULT_INIT_FLAGS,
) -> bytes:
    """INIT as a modern kernel sends it (64-byte ``fuse_init_in``, flags2 = ``flags >> 32``)."""
    body = abi.INIT_IN.pack(major, minor, max_readahead, flags & 0xFFFFFFFF, flags >> 32)
    return request(Opcode.INIT, unique, 0, body)


def destroy(unique: int) -> bytes:
    """DESTROY (unmount)."""
    return request(Opcode.DESTROY, unique, 0)


def lookup(unique: int, parent: int, name: bytes | str) -> bytes:
    """LOOKUP ``name`` in directory ``parent``."""
    return request(Opcode.LOOKUP, unique, parent, _z(name))


def forget(unique: int, nodeid: int, nlookup: int) -> bytes:
    """FORGET ``nlookup`` lookups of ``nodeid`` (no reply)."""
    return request(Opcode.FORGET, unique, nodeid, abi.FORGET_IN.pack(nlookup))


def batch_forget(unique: int, items: Iterable[tuple[int, int]]) -> bytes:
    """BATCH_FORGET of ``(nodeid, nlookup)`` pairs (no reply)."""
    pairs = list(items)
    body = abi.BATCH_FORGET_IN.pack(len(pairs), 0)
    body += b"".join(abi.FORGET_ONE.pack(n, c) for n, c in pairs)
    return request(Opcode.BATCH_FORGET, unique, 0, body)


def interrupt(unique: int, target: int) -> bytes:
    """INTERRUPT of request ``target`` (no reply)."""
    return request(Opcode.INTERRUPT, unique, 0, abi.INTERRUPT_IN.pack(target))


def getattr(unique: int, nodeid: int, fh: int | None = None) -> bytes:
    """GETATTR, through an open file when ``fh`` is given."""
    flags = abi.GETATTR_FH if fh is not None else 0
    return request(Opcode.GETATTR, unique, nodeid, abi.GETATTR_IN.pack(flags, 0, fh or 0))


def setattr(
    unique: int,
    nodeid: int,
    *,
    mode: int | None = None,
    uid: int | None = None,
    gid: int | None = None,
    size: int | None = None,
    atime_ns: int | None = None,
    mtime_ns: int | None = None,
    atime_now: bool = False,
    mtime_now: bool = False,
    fh: int | None = None,
) -> bytes:
    """SETATTR of the given fields only (``valid`` is built from what is not None)."""
    valid = 0
    valid |= abi.FATTR_MODE if mode is not None else 0
    valid |= abi.FATTR_UID if uid is not None else 0
    valid |= abi.FATTR_GID if gid is not None else 0
    valid |= abi.FATTR_SIZE if size is not None else 0
    valid |= abi.FATTR_FH if fh is not None else 0
    valid |= abi.FATTR_ATIME if atime_ns is not None or atime_now else 0
    valid |= abi.FATTR_MTIME if mtime_ns is not None or mtime_now else 0
    valid |= abi.FATTR_ATIME_NOW if atime_now else 0
    valid |= abi.FATTR_MTIME_NOW if mtime_now else 0
    a_s, a_ns = divmod(atime_ns or 0, 1_000_000_000)
    m_s, m_ns = divmod(mtime_ns or 0, 1_000_000_000)
    body = abi.SETATTR_IN.pack(
        valid, 0, fh or 0, size or 0, 0, a_s, m_s, 0, a_ns, m_ns, 0, mode or 0, 0,
        uid or 0, gid or 0, 0,
    )  # fmt: skip
    return request(Opcode.SETATTR, unique, nodeid, body)


def open_(unique: int, nodeid: int, flags: int = os.O_RDONLY) -> bytes:
    """OPEN with open(2) ``flags``."""
    return request(Opcode.OPEN, unique, nodeid, abi.OPEN_IN.pack(flags, 0))


def opendir(unique: int, nodeid: int) -> bytes:
    """OPENDIR."""
    return request(Opcode.OPENDIR, unique, nodeid, abi.OPEN_IN.pack(os.O_RDONLY, 0))


def create(
    unique: int,
    parent: int,
    name: bytes | str,
    flags: int = os.O_WRONLY | os.O_CREAT,
    mode: int = 0o100644,
    *,
    uid: int = 0,
    gid: int = 0,
    umask: int = 0,
) -> bytes:
    """CREATE (atomic create + open) of a regular file."""
    body = abi.CREATE_IN.pack(flags, mode, umask, 0) + _z(name)
    return request(Opcode.CREATE, unique, parent, body, uid=uid, gid=gid)


def mkdir(
    unique: int,
    parent: int,
    name: bytes | str,
    mode: int = 0o755,
    *,
    uid: int = 0,
    gid: int = 0,
    umask: int = 0,
) -> bytes:
    """MKDIR."""
    body = abi.MKDIR_IN.pack(mode, umask) + _z(name)
    return request(Opcode.MKDIR, unique, parent, body, uid=uid, gid=gid)


def mknod(
    unique: int, parent: int, name: bytes | str, mode: int, rdev: int = 0, *, umask: int = 0
) -> bytes:
    """MKNOD (``mode`` includes the file type bits)."""
    body = abi.MKNOD_IN.pack(mode, rdev, umask, 0) + _z(name)
    return request(Opcode.MKNOD, unique, parent, body)


def symlink(unique: int, parent: int, name: bytes | str, target: bytes | str) -> bytes:
    """SYMLINK: the body is ``name\\0target\\0``."""
    return request(Opcode.SYMLINK, unique, parent, _z(name) + _z(target))


def readlink(unique: int, nodeid: int) -> bytes:
    """READLINK."""
    return request(Opcode.READLINK, unique, nodeid)


def link(unique: int, nodeid: int, newparent: int, newname: bytes | str) -> bytes:
    """LINK: a new name for ``nodeid`` in ``newparent``."""
    return request(Opcode.LINK, unique, newparent, abi.LINK_IN.pack(nodeid) + _z(newname))


def unlink(unique: int, parent: int, name: bytes | str) -> bytes:
    """UNLINK."""
    return request(Opcode.UNLINK, unique, parent, _z(name))


def rmdir(unique: int, parent: int, name: bytes | str) -> bytes:
    """RMDIR."""
    return request(Opcode.RMDIR, unique, parent, _z(name))


def rename(
    unique: int, parent: int, name: bytes | str, newparent: int, newname: bytes | str
) -> bytes:
    """RENAME: ``rename_in`` then ``old\\0new\\0``."""
    body = abi.RENAME_IN.pack(newparent) + _z(name) + _z(newname)
    return request(Opcode.RENAME, unique, parent, body)


def rename2(
    unique: int,
    parent: int,
    name: bytes | str,
    newparent: int,
    newname: bytes | str,
    flags: int,
) -> bytes:
    """RENAME2 with renameat2 ``flags`` (NOREPLACE, EXCHANGE, WHITEOUT)."""
    body = abi.RENAME2_IN.pack(newparent, flags, 0) + _z(name) + _z(newname)
    return request(Opcode.RENAME2, unique, parent, body)


def _rw(
    op: int, unique: int, nodeid: int, fh: int, offset: int, size: int, data: bytes = b""
) -> bytes:
    return request(op, unique, nodeid, abi.READ_IN.pack(fh, offset, size, 0, 0, 0, 0) + data)


def read(unique: int, nodeid: int, fh: int, offset: int, size: int) -> bytes:
    """READ ``size`` bytes at ``offset``."""
    return _rw(Opcode.READ, unique, nodeid, fh, offset, size)


def write(unique: int, nodeid: int, fh: int, offset: int, data: bytes) -> bytes:
    """WRITE ``data`` at ``offset`` (``write_in`` followed by the data; in_header.len counts
    both, as the kernel's does)."""
    return _rw(Opcode.WRITE, unique, nodeid, fh, offset, len(data), data)


def readdir(unique: int, nodeid: int, fh: int, offset: int = 0, size: int = 4096) -> bytes:
    """READDIR from cookie ``offset``, at most ``size`` bytes of dirents."""
    return _rw(Opcode.READDIR, unique, nodeid, fh, offset, size)


def readdirplus(unique: int, nodeid: int, fh: int, offset: int = 0, size: int = 4096) -> bytes:
    """READDIRPLUS from cookie ``offset``."""
    return _rw(Opcode.READDIRPLUS, unique, nodeid, fh, offset, size)


def flush(unique: int, nodeid: int, fh: int, lock_owner: int = 0) -> bytes:
    """FLUSH (one per close(2) in the guest; drops ``lock_owner``'s POSIX locks)."""
    return request(Opcode.FLUSH, unique, nodeid, abi.FLUSH_IN.pack(fh, 0, 0, lock_owner))


def release(
    unique: int, nodeid: int, fh: int, release_flags: int = 0, lock_owner: int = 0
) -> bytes:
    """RELEASE of an open file."""
    body = abi.RELEASE_IN.pack(fh, 0, release_flags, lock_owner)
    return request(Opcode.RELEASE, unique, nodeid, body)


def lk(
    opcode: int,
    unique: int,
    nodeid: int,
    fh: int,
    owner: int,
    kind: int,
    start: int = 0,
    end: int = abi.OFFSET_MAX,
    *,
    pid: int = 0,
    flock: bool = False,
) -> bytes:
    """GETLK/SETLK/SETLKW: ``kind`` is F_RDLCK/F_WRLCK/F_UNLCK; ``end`` is inclusive."""
    flags = abi.LK_FLOCK if flock else 0
    body = abi.LK_IN.pack(fh, owner, start, end, kind, pid, flags, 0)
    return request(opcode, unique, nodeid, body)


def getlk(
    unique: int, nodeid: int, fh: int, owner: int, kind: int, start: int = 0,
    end: int = abi.OFFSET_MAX,
) -> bytes:  # fmt: skip
    """GETLK: which lock would block this one."""
    return lk(Opcode.GETLK, unique, nodeid, fh, owner, kind, start, end)


def setlk(
    unique: int, nodeid: int, fh: int, owner: int, kind: int, start: int = 0,
    end: int = abi.OFFSET_MAX, *, pid: int = 0, flock: bool = False,
) -> bytes:  # fmt: skip
    """SETLK: take/drop a lock without waiting (EAGAIN on conflict)."""
    return lk(Opcode.SETLK, unique, nodeid, fh, owner, kind, start, end, pid=pid, flock=flock)


def setlkw(
    unique: int, nodeid: int, fh: int, owner: int, kind: int, start: int = 0,
    end: int = abi.OFFSET_MAX, *, pid: int = 0, flock: bool = False,
) -> bytes:  # fmt: skip
    """SETLKW: take a lock, waiting for conflicting ones to go."""
    return lk(Opcode.SETLKW, unique, nodeid, fh, owner, kind, start, end, pid=pid, flock=flock)


def releasedir(unique: int, nodeid: int, fh: int) -> bytes:
    """RELEASEDIR."""
    return request(Opcode.RELEASEDIR, unique, nodeid, abi.RELEASE_IN.pack(fh, 0, 0, 0))


def fsync(unique: int, nodeid: int, fh: int, datasync: bool = False) -> bytes:
    """FSYNC (FDATASYNC when ``datasync``)."""
    return request(Opcode.FSYNC, unique, nodeid, abi.FSYNC_IN.pack(fh, int(datasync), 0))


def fsyncdir(unique: int, nodeid: int, fh: int, datasync: bool = False) -> bytes:
    """FSYNCDIR."""
    return request(Opcode.FSYNCDIR, unique, nodeid, abi.FSYNC_IN.pack(fh, int(datasync), 0))


def syncfs(unique: int, nodeid: int = abi.ROOT_ID) -> bytes:
    """SYNCFS (a guest ``sync``)."""
    return request(Opcode.SYNCFS, unique, nodeid, bytes(8))


def statfs(unique: int, nodeid: int = abi.ROOT_ID) -> bytes:
    """STATFS."""
    return request(Opcode.STATFS, unique, nodeid)


def access(unique: int, nodeid: int, mask: int, *, uid: int = 0, gid: int = 0) -> bytes:
    """ACCESS with an access(2) ``mask``, as caller ``uid``/``gid``."""
    return request(Opcode.ACCESS, unique, nodeid, abi.ACCESS_IN.pack(mask, 0), uid=uid, gid=gid)


def fallocate(unique: int, nodeid: int, fh: int, offset: int, length: int, mode: int = 0) -> bytes:
    """FALLOCATE."""
    body = abi.FALLOCATE_IN.pack(fh, offset, length, mode, 0)
    return request(Opcode.FALLOCATE, unique, nodeid, body)


def lseek(unique: int, nodeid: int, fh: int, offset: int, whence: int) -> bytes:
    """LSEEK (SEEK_DATA / SEEK_HOLE)."""
    return request(Opcode.LSEEK, unique, nodeid, abi.LSEEK_IN.pack(fh, offset, whence, 0))


def copy_file_range(
    unique: int,
    nodeid: int,
    fh_in: int,
    off_in: int,
    nodeid_out: int,
    fh_out: int,
    off_out: int,
    length: int,
) -> bytes:
    """COPY_FILE_RANGE."""
    body = abi.COPY_FILE_RANGE_IN.pack(fh_in, off_in, nodeid_out, fh_out, off_out, length, 0)
    return request(Opcode.COPY_FILE_RANGE, unique, nodeid, body)


def setxattr(unique: int, nodeid: int, name: bytes | str, value: bytes, flags: int = 0) -> bytes:
    """SETXATTR with the 8-byte compat ``fuse_setxattr_in`` (no SETXATTR_EXT)."""
    body = abi.SETXATTR_IN.pack(len(value), flags) + _z(name) + value
    return request(Opcode.SETXATTR, unique, nodeid, body)


def setxattr_ext(
    unique: int,
    nodeid: int,
    name: bytes | str,
    value: bytes,
    flags: int = 0,
    setxattr_flags: int = 0,
    *,
    uid: int = 0,
    gid: int = 0,
) -> bytes:
    """SETXATTR with the 16-byte ``fuse_setxattr_in`` of a session granted SETXATTR_EXT."""
    body = abi.SETXATTR_EXT_IN.pack(len(value), flags, setxattr_flags, 0) + _z(name) + value
    return request(Opcode.SETXATTR, unique, nodeid, body, uid=uid, gid=gid)


def getxattr(unique: int, nodeid: int, name: bytes | str, size: int) -> bytes:
    """GETXATTR; ``size`` 0 is the size probe."""
    return request(Opcode.GETXATTR, unique, nodeid, abi.GETXATTR_IN.pack(size, 0) + _z(name))


def listxattr(unique: int, nodeid: int, size: int) -> bytes:
    """LISTXATTR; ``size`` 0 is the size probe."""
    return request(Opcode.LISTXATTR, unique, nodeid, abi.GETXATTR_IN.pack(size, 0))


def removexattr(unique: int, nodeid: int, name: bytes | str) -> bytes:
    """REMOVEXATTR."""
    return request(Opcode.REMOVEXATTR, unique, nodeid, _z(name))


# --- replies -------------------------------------------------------------------------------


class Reply(NamedTuple):
    """A decoded ``fuse_out_header`` and the payload after it."""

    length: int
    error: int
    unique: int
    payload: bytes


class Attr(NamedTuple):
    """``fuse_attr``."""

    ino: int
    size: int
    blocks: int
    atime: int
    mtime: int
    ctime: int
    atimensec: int
    mtimensec: int
    ctimensec: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    blksize: int
    flags: int


class Entry(NamedTuple):
    """``fuse_entry_out``."""

    nodeid: int
    generation: int
    entry_valid: int
    attr_valid: int
    entry_valid_nsec: int
    attr_valid_nsec: int
    attr: Attr


class Dirent(NamedTuple):
    """One ``fuse_dirent`` (and, for READDIRPLUS, its entry)."""

    ino: int
    off: int
    type: int
    name: bytes
    entry: Entry | None = None


class InitOut(NamedTuple):
    """``fuse_init_out``."""

    major: int
    minor: int
    max_readahead: int
    flags: int
    max_background: int
    congestion_threshold: int
    max_write: int
    time_gran: int
    max_pages: int
    map_alignment: int
    flags2: int
    max_stack_depth: int


def parse_reply(data: bytes) -> Reply:
    """Split a reply into its header fields and payload; checks the length field."""
    length, error, unique = abi.OUT_HEADER.unpack_from(data)
    if length != len(data):
        raise ValueError(f"out_header.len {length} but {len(data)} bytes")
    return Reply(length, error, unique, bytes(data[abi.OUT_HEADER.size :]))


def parse_entry(payload: bytes, offset: int = 0) -> Entry:
    """``fuse_entry_out`` (LOOKUP, MKDIR, CREATE's first part...)."""
    v = abi.ENTRY_OUT.unpack_from(payload, offset)
    return Entry(v[0], v[1], v[2], v[3], v[4], v[5], Attr(*v[6:]))


def parse_attr_out(payload: bytes) -> tuple[int, int, Attr]:
    """``fuse_attr_out``: ``(attr_valid, attr_valid_nsec, attr)``."""
    v = abi.ATTR_OUT.unpack_from(payload)
    return v[0], v[1], Attr(*v[3:])


def parse_open(payload: bytes, offset: int = 0) -> tuple[int, int]:
    """``fuse_open_out``: ``(fh, open_flags)``."""
    fh, flags, _ = abi.OPEN_OUT.unpack_from(payload, offset)
    return fh, flags


def parse_write(payload: bytes) -> int:
    """``fuse_write_out``: bytes written."""
    return int(abi.WRITE_OUT.unpack_from(payload)[0])


def parse_statfs(payload: bytes) -> tuple[int, ...]:
    """``fuse_kstatfs``: blocks, bfree, bavail, files, ffree, bsize, namelen, frsize."""
    return tuple(abi.STATFS_OUT.unpack_from(payload)[:8])


def parse_init(payload: bytes) -> InitOut:
    """``fuse_init_out`` (64 bytes)."""
    return InitOut(*abi.INIT_OUT.unpack_from(payload))


def parse_dirents(payload: bytes) -> list[Dirent]:
    """READDIR's packed ``fuse_dirent`` records."""
    out = []
    pos = 0
    while pos < len(payload):
        ino, off, namelen, dtype = abi.DIRENT.unpack_from(payload, pos)
        start = pos + abi.DIRENT.size
        out.append(Dirent(ino, off, dtype, payload[start : start + namelen]))
        pos += abi.dirent_size(namelen)
    return out


def parse_direntplus(payload: bytes) -> list[Dirent]:
    """READDIRPLUS's packed ``fuse_direntplus`` records."""
    out = []
    pos = 0
    while pos < len(payload):
        entry = parse_entry(payload, pos)
        dpos = pos + abi.ENTRY_OUT.size
        ino, off, namelen, dtype = abi.DIRENT.unpack_from(payload, dpos)
        start = dpos + abi.DIRENT.size
        out.append(Dirent(ino, off, dtype, payload[start : start + namelen], entry))
        pos += abi.direntplus_size(namelen)
    return out


def parse_lk(payload: bytes) -> tuple[int, int, int, int]:
    """GETLK's ``fuse_lk_out``: (start, end, type, pid)."""
    start, end, kind, pid = abi.LK_OUT.unpack_from(payload)
    return start, end, kind, pid


class Submitted:
    """A request that may be answered later (SETLKW): ``wait`` for its reply bytes."""

    def __init__(self, space: bytearray) -> None:
        self._space = space
        self._event = threading.Event()
        self._size = 0

    def _done(self, size: int) -> None:
        self._size = size
        self._event.set()

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float = 10.0) -> bytes:
        """The reply; ``TimeoutError`` if none came within ``timeout`` seconds."""
        if not self._event.wait(timeout):
            raise TimeoutError("no reply")
        return bytes(self._space[: self._size])


class _Server(Protocol):
    """The part of :class:`~fsd.fuse.FuseServer` the client needs."""

    def handle(self, request: Segments, reply: Segments) -> int: ...


class FuseClient:
    """Drives a FUSE server with real request bytes, like a kernel client with one thread.

    ``call`` returns the raw reply; the named methods raise ``OSError(errno)`` on an error
    reply and return decoded payloads. Requests are split into several segments when
    ``split`` is set, to exercise scatter-gather paths.
    """

    def __init__(self, server: _Server, *, reply_capacity: int = 1 << 20 | 4096) -> None:
        self.server = server
        self.reply_capacity = reply_capacity
        self.unique = 0

    def next_unique(self) -> int:
        """A fresh request id (even numbers, as the kernel uses)."""
        self.unique += 2
        return self.unique

    def call(self, data: bytes, *, capacity: int | None = None, split: int = 0) -> bytes:
        """Send one request; the reply bytes (empty when the server sends none)."""
        if split:
            segments = [memoryview(data[i : i + split]) for i in range(0, len(data), split)]
        else:
            segments = [memoryview(data)]
        space = bytearray(capacity if capacity is not None else self.reply_capacity)
        n = self.server.handle(segments, [memoryview(space)])
        assert n != DEFERRED, "call() of a request the server deferred: use submit()"
        return bytes(space[: max(n, 0)])  # NO_REPLY: no bytes

    def submit(self, data: bytes) -> Submitted:
        """Send one request that the server may defer (returns DEFERRED) and answer later."""
        space = bytearray(self.reply_capacity)
        sub = Submitted(space)
        n = self.server.handle([memoryview(data)], [memoryview(space)])
        if n != DEFERRED:
            sub._done(max(n, 0))
            return sub
        deferred = take_deferred()
        assert deferred is not None, "handle() deferred without a Deferred"
        deferred.on_done(sub._done)
        return sub

    def ok(self, data: bytes, **kwargs: int) -> bytes:
        """Send one request and return its payload; raise ``OSError`` on an error reply."""
        reply = parse_reply(self.call(data, **kwargs))
        if reply.error:
            raise OSError(-reply.error, os.strerror(-reply.error))
        return reply.payload

    def init(self, **kwargs: int) -> InitOut:
        """INIT the session."""
        return parse_init(self.ok(init_request(self.next_unique(), **kwargs)))

    def lookup(self, parent: int, name: bytes | str) -> Entry:
        """LOOKUP → entry."""
        return parse_entry(self.ok(lookup(self.next_unique(), parent, name)))

    def getattr(self, nodeid: int) -> Attr:
        """GETATTR → attributes."""
        return parse_attr_out(self.ok(getattr(self.next_unique(), nodeid)))[2]

    def create(self, parent: int, name: bytes | str, flags: int = os.O_RDWR) -> tuple[Entry, int]:
        """CREATE → (entry, fh)."""
        payload = self.ok(create(self.next_unique(), parent, name, flags | os.O_CREAT))
        return parse_entry(payload), parse_open(payload, abi.ENTRY_OUT.size)[0]

    def mkdir(self, parent: int, name: bytes | str, mode: int = 0o755) -> Entry:
        """MKDIR → entry."""
        return parse_entry(self.ok(mkdir(self.next_unique(), parent, name, mode)))

    def open(self, nodeid: int, flags: int = os.O_RDONLY) -> int:
        """OPEN → fh."""
        return parse_open(self.ok(open_(self.next_unique(), nodeid, flags)))[0]

    def opendir(self, nodeid: int) -> int:
        """OPENDIR → fh."""
        return parse_open(self.ok(opendir(self.next_unique(), nodeid)))[0]

    def read(self, nodeid: int, fh: int, offset: int, size: int) -> bytes:
        """READ → data."""
        return self.ok(read(self.next_unique(), nodeid, fh, offset, size))

    def write(self, nodeid: int, fh: int, offset: int, data: bytes) -> int:
        """WRITE → bytes written."""
        return parse_write(self.ok(write(self.next_unique(), nodeid, fh, offset, data)))

    def readdir(self, nodeid: int, fh: int, offset: int = 0, size: int = 4096) -> list[Dirent]:
        """One READDIR call → entries."""
        return parse_dirents(self.ok(readdir(self.next_unique(), nodeid, fh, offset, size)))

    def readdirplus(self, nodeid: int, fh: int, offset: int = 0, size: int = 4096) -> list[Dirent]:
        """One READDIRPLUS call → entries with their lookups."""
        payload = self.ok(readdirplus(self.next_unique(), nodeid, fh, offset, size))
        return parse_direntplus(payload)

    def listdir(self, nodeid: int, *, plus: bool = False, size: int = 4096) -> list[Dirent]:
        """OPENDIR, READDIR(PLUS) until an empty reply, RELEASEDIR: the whole listing."""
        fh = self.opendir(nodeid)
        out: list[Dirent] = []
        offset = 0
        while True:
            batch = (self.readdirplus if plus else self.readdir)(nodeid, fh, offset, size)
            if not batch:
                break
            out += batch
            offset = batch[-1].off
        self.ok(releasedir(self.next_unique(), nodeid, fh))
        return out

    def errno_of(self, data: bytes) -> int:
        """The errno an error reply carries (0 for success)."""
        return -parse_reply(self.call(data)).error
