"""Request decoding: a request's bytes become one :class:`Request`, decoded once.

The header gives the :class:`~fsd.fuse.filesystem.Context`; the opcode's arguments are
decoded by the table :data:`OPS` into a tuple whose field names the table also gives. The
server's handlers and the plugin hooks read the same decoded value, and the handler records
its outcome on it (the errno, the data bytes moved) for the audit hook. Pure: bytes in,
values or :class:`~fsd.fuse.errors.ProtocolError` out.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from fsd.fuse.abi import (
    ACCESS_IN,
    BATCH_FORGET_IN,
    COPY_FILE_RANGE_IN,
    CREATE_IN,
    FALLOCATE_IN,
    FLUSH_IN,
    FORGET_IN,
    FORGET_ONE,
    FSYNC_IN,
    GETXATTR_IN,
    IN_HEADER,
    INIT_IN,
    INIT_IN_V1,
    INIT_IN_V2,
    INTERRUPT_IN,
    IOCTL_IN,
    LINK_IN,
    LK_IN,
    LSEEK_IN,
    MKDIR_IN,
    MKNOD_IN,
    OPEN_IN,
    READ_IN,
    RELEASE_IN,
    RENAME2_IN,
    RENAME_IN,
    SETATTR_IN,
    SETXATTR_IN,
    STATX_IN,
    WRITE_IN,
    XATTR_SIZE_MAX,
    InitFlag,
    Opcode,
    op_name,
)
from fsd.fuse.codec import parse_name, parse_symlink, parse_two_names, parse_xattr_name
from fsd.fuse.errors import ProtocolError
from fsd.fuse.filesystem import Context, SetattrArgs
from fsd.sgbuf import BufferTooShort, SgReader

__all__ = ["OPS", "MalformedRequest", "Op", "Request", "decode"]

_NSEC: Final = 1_000_000_000

Args = tuple[Any, ...]
Decoder = Callable[[SgReader, int], Args]
"""Decodes one opcode's arguments from the reader, given the bytes that belong to them."""


class Op(NamedTuple):
    """How one opcode's arguments are laid out: the decoder and the names of what it returns.

    The names are what plugins see (``fsd.hookinfo.describe`` picks ``name``, ``newname``,
    ``target``, ``flags``, ``mode``, ``offset`` and ``size`` by name, and shows the inodes
    ``newdir``, ``oldnodeid`` and ``nodeid_out`` as paths), so a field is called one of those
    only where docs/hooks.md says plugins get it; ``_`` is padding.
    """

    decode: Decoder
    fields: tuple[str, ...]


class Request(Context):
    """One decoded request: its context, opcode, target inode and decoded arguments.

    It is the request's :class:`~fsd.fuse.filesystem.Context` too (the filesystem is handed
    the request as its context, without a second object per request). ``error`` and ``moved``
    are the outcome, filled in by the server: the errno answered (0 for success) and, for
    READ, WRITE and COPY_FILE_RANGE, the data bytes moved.
    """

    __slots__ = ("args", "error", "moved", "nodeid", "opcode")

    def __init__(
        self, opcode: int, unique: int, nodeid: int, uid: int, gid: int, pid: int, args: Args
    ) -> None:
        self.opcode = opcode
        self.unique = unique
        self.nodeid = nodeid
        self.uid = uid
        self.gid = gid
        self.pid = pid
        self.args = args
        self.error = 0
        self.moved = 0

    def __repr__(self) -> str:
        return f"Request({op_name(self.opcode)}, unique={self.unique}, nodeid={self.nodeid})"


class MalformedRequest(ProtocolError):
    """A request whose header is whole but whose length or arguments are not; the reply is
    ``errno`` for ``unique`` (none for an opcode that is never answered)."""

    def __init__(self, message: str, opcode: int, unique: int, nodeid: int, code: int) -> None:
        super().__init__(message, code)
        self.opcode = opcode
        self.unique = unique
        self.nodeid = nodeid


def decode(reader: SgReader) -> Request:
    """Decode one request (header, then the opcode's arguments).

    Raises ``BufferTooShort`` when not even the header is there (nothing can be answered)
    and :class:`MalformedRequest` when the arguments cannot be decoded (answer the errno).
    An opcode missing from :data:`OPS` decodes with no arguments (the server answers ENOSYS).
    """
    length, opcode, unique, nodeid, uid, gid, pid, _extlen, _pad = reader.read_struct(IN_HEADER)
    body_len = length - IN_HEADER.size
    try:
        if body_len < 0 or body_len > reader.remaining:
            raise ProtocolError(f"in_header.len {length} does not match the request")
        op = OPS.get(opcode)
        args = op.decode(reader, body_len) if op is not None else ()
    except (ProtocolError, BufferTooShort) as exc:
        code = exc.errno if isinstance(exc, ProtocolError) else errno.EINVAL
        raise MalformedRequest(str(exc), opcode, unique, nodeid, code) from None
    return Request(opcode, unique, nodeid, uid, gid, pid, args)


# --- decoders ------------------------------------------------------------------------------


def _rest(reader: SgReader, n: int) -> bytes:
    """The ``n`` bytes left of the request's arguments (names), as far as they go."""
    return reader.read(min(n, reader.remaining)) if n > 0 else b""


def _nothing(_reader: SgReader, _n: int) -> Args:
    return ()


def _fixed(st: struct.Struct) -> Decoder:
    """An opcode whose arguments are one struct."""

    def decode(reader: SgReader, _n: int) -> Args:
        return reader.read_struct(st)

    return decode


def _fixed_then_name(st: struct.Struct) -> Decoder:
    """A struct, then a NUL-terminated name (MKDIR, MKNOD, CREATE, LINK)."""

    def decode(reader: SgReader, n: int) -> Args:
        values = reader.read_struct(st)
        return (*values, parse_name(_rest(reader, n - st.size)))

    return decode


def _fixed_then_two_names(st: struct.Struct) -> Decoder:
    """A struct, then ``old\\0new\\0`` (RENAME, RENAME2)."""

    def decode(reader: SgReader, n: int) -> Args:
        values = reader.read_struct(st)
        return (*values, *parse_two_names(_rest(reader, n - st.size)))

    return decode


def _lookup(reader: SgReader, n: int) -> Args:
    # NFS-style lookups of "." and ".." are legitimate here; the filesystem resolves them.
    return (parse_name(_rest(reader, n), allow_dots=True),)


def _name(reader: SgReader, n: int) -> Args:
    return (parse_name(_rest(reader, n)),)


def _symlink(reader: SgReader, n: int) -> Args:
    return parse_symlink(_rest(reader, n))


def _init(reader: SgReader, n: int) -> Args:
    """``fuse_init_in`` is 8, 16 or 64 bytes by protocol version; ``flags2`` (read only with
    INIT_EXT) becomes the high half of ``flags``."""
    if n >= INIT_IN.size:
        major, minor, readahead, flags, flags2 = reader.read_struct(INIT_IN)
        if flags & InitFlag.INIT_EXT:
            flags |= flags2 << 32
    elif n >= INIT_IN_V2.size:
        major, minor, readahead, flags = reader.read_struct(INIT_IN_V2)
    elif n >= INIT_IN_V1.size:
        (major, minor), readahead, flags = reader.read_struct(INIT_IN_V1), 0, 0
    else:
        raise ProtocolError("INIT shorter than 8 bytes")
    return major, minor, readahead, flags


def _batch_forget(reader: SgReader, _n: int) -> Args:
    count, _ = reader.read_struct(BATCH_FORGET_IN)
    count = min(count, reader.remaining // FORGET_ONE.size)
    read = reader.read_struct
    return (tuple(read(FORGET_ONE) for _ in range(count)),)


def _setattr(reader: SgReader, _n: int) -> Args:
    (valid, _, fh, size, _lock, atime, mtime, _ctime, atimensec, mtimensec, _ctimensec, mode,
     _, uid, gid, _) = reader.read_struct(SETATTR_IN)  # fmt: skip
    return SetattrArgs(
        valid, fh, size, atime * _NSEC + atimensec, mtime * _NSEC + mtimensec, mode, uid, gid
    )


def _tmpfile(reader: SgReader, _n: int) -> Args:
    # CREATE's layout; the name the kernel sends ("/") means nothing and is not decoded.
    return reader.read_struct(CREATE_IN)


def _write(reader: SgReader, _n: int) -> Args:
    fh, offset, size, write_flags, lock_owner, flags, _ = reader.read_struct(WRITE_IN)
    return fh, offset, size, write_flags, lock_owner, flags, reader.take_views(size)


def _getxattr(reader: SgReader, n: int) -> Args:
    size, _ = reader.read_struct(GETXATTR_IN)
    return size, parse_xattr_name(_rest(reader, n - GETXATTR_IN.size))


def _setxattr(reader: SgReader, n: int) -> Args:
    # The 8-byte compat fuse_setxattr_in: SETXATTR_EXT is never granted.
    size, flags = reader.read_struct(SETXATTR_IN)
    body = _rest(reader, n - SETXATTR_IN.size)
    name = parse_xattr_name(body)
    start = len(name) + 1
    if size > XATTR_SIZE_MAX:
        raise ProtocolError("xattr value too large", errno.E2BIG)
    if len(body) < start + size:
        raise ProtocolError(f"setxattr value shorter than {size} bytes")
    return name, body[start : start + size], flags


def _removexattr(reader: SgReader, n: int) -> Args:
    return (parse_xattr_name(_rest(reader, n)),)


_READ_FIELDS: Final = ("fh", "offset", "size", "read_flags", "lock_owner", "open_flags", "_")
_LK_FIELDS: Final = ("fh", "owner", "start", "end", "type", "lk_pid", "lk_flags", "_")

#: Every opcode the server decodes: the decoder and the names of the values it returns.
OPS: Final[dict[int, Op]] = {
    Opcode.INIT: Op(_init, ("major", "minor", "max_readahead", "init_flags")),
    Opcode.DESTROY: Op(_nothing, ()),
    Opcode.LOOKUP: Op(_lookup, ("name",)),
    Opcode.FORGET: Op(_fixed(FORGET_IN), ("nlookup",)),
    Opcode.BATCH_FORGET: Op(_batch_forget, ("forgets",)),
    Opcode.INTERRUPT: Op(_fixed(INTERRUPT_IN), ("interrupted",)),
    Opcode.GETATTR: Op(_nothing, ()),
    Opcode.STATX: Op(_fixed(STATX_IN), ("getattr_flags", "_", "fh", "sx_flags", "sx_mask")),
    Opcode.SETATTR: Op(_setattr, SetattrArgs._fields),
    Opcode.READLINK: Op(_nothing, ()),
    Opcode.SYMLINK: Op(_symlink, ("name", "target")),
    Opcode.MKNOD: Op(_fixed_then_name(MKNOD_IN), ("mode", "rdev", "umask", "_", "name")),
    Opcode.MKDIR: Op(_fixed_then_name(MKDIR_IN), ("mode", "umask", "name")),
    Opcode.UNLINK: Op(_name, ("name",)),
    Opcode.RMDIR: Op(_name, ("name",)),
    Opcode.RENAME: Op(_fixed_then_two_names(RENAME_IN), ("newdir", "name", "newname")),
    Opcode.RENAME2: Op(
        _fixed_then_two_names(RENAME2_IN), ("newdir", "flags", "_", "name", "newname")
    ),
    Opcode.LINK: Op(_fixed_then_name(LINK_IN), ("oldnodeid", "newname")),
    Opcode.OPEN: Op(_fixed(OPEN_IN), ("flags", "open_flags")),
    Opcode.CREATE: Op(
        _fixed_then_name(CREATE_IN), ("flags", "mode", "umask", "open_flags", "name")
    ),
    Opcode.TMPFILE: Op(_tmpfile, ("flags", "mode", "umask", "open_flags")),
    Opcode.READ: Op(_fixed(READ_IN), _READ_FIELDS),
    Opcode.WRITE: Op(
        _write, ("fh", "offset", "size", "write_flags", "lock_owner", "open_flags", "data")
    ),
    Opcode.FLUSH: Op(_fixed(FLUSH_IN), ("fh", "_", "_", "lock_owner")),
    Opcode.RELEASE: Op(_fixed(RELEASE_IN), ("fh", "open_flags", "release_flags", "lock_owner")),
    Opcode.FSYNC: Op(_fixed(FSYNC_IN), ("fh", "fsync_flags", "_")),
    Opcode.GETLK: Op(_fixed(LK_IN), _LK_FIELDS),
    Opcode.SETLK: Op(_fixed(LK_IN), _LK_FIELDS),
    Opcode.SETLKW: Op(_fixed(LK_IN), _LK_FIELDS),
    Opcode.FALLOCATE: Op(_fixed(FALLOCATE_IN), ("fh", "offset", "length", "fallocate_mode", "_")),
    Opcode.LSEEK: Op(_fixed(LSEEK_IN), ("fh", "offset", "whence", "_")),
    Opcode.COPY_FILE_RANGE: Op(
        _fixed(COPY_FILE_RANGE_IN),
        ("fh", "off_in", "nodeid_out", "fh_out", "offset", "size", "copy_flags"),
    ),
    Opcode.OPENDIR: Op(_fixed(OPEN_IN), ("flags", "open_flags")),
    Opcode.READDIR: Op(_fixed(READ_IN), _READ_FIELDS),
    Opcode.READDIRPLUS: Op(_fixed(READ_IN), _READ_FIELDS),
    Opcode.RELEASEDIR: Op(_fixed(RELEASE_IN), ("fh", "open_flags", "release_flags", "lock_owner")),
    Opcode.FSYNCDIR: Op(_fixed(FSYNC_IN), ("fh", "fsync_flags", "_")),
    Opcode.STATFS: Op(_nothing, ()),
    Opcode.ACCESS: Op(_fixed(ACCESS_IN), ("mask", "_")),
    Opcode.SYNCFS: Op(_nothing, ()),
    Opcode.GETXATTR: Op(_getxattr, ("reply_size", "xattr")),
    Opcode.LISTXATTR: Op(_fixed(GETXATTR_IN), ("reply_size", "_")),
    Opcode.SETXATTR: Op(_setxattr, ("xattr", "value", "xattr_flags")),
    Opcode.REMOVEXATTR: Op(_removexattr, ("xattr",)),
    Opcode.IOCTL: Op(_fixed(IOCTL_IN), ("fh", "ioctl_flags", "cmd", "arg", "in_size", "out_size")),
}
