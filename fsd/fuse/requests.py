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
from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple

from fsd.fuse.abi import (
    ACCESS_IN,
    BATCH_FORGET_IN,
    COPY_FILE_RANGE_IN,
    CREATE_IN,
    EXT_GROUPS,
    EXT_HEADER,
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
    SETXATTR_EXT_IN,
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
from fsd.sgbuf import BufferTooShort, Segments, gather, views

__all__ = ["OPS", "ExtendedRequest", "MalformedRequest", "Op", "Request", "decode", "decoders_for"]

_HEADER: Final = IN_HEADER.size
_WRITE: Final = int(Opcode.WRITE)
_EMPTY: Final = memoryview(b"")
_unpack_header: Final = IN_HEADER.unpack_from

_NSEC: Final = 1_000_000_000
_U32: Final = struct.Struct("<I")

Args = tuple[Any, ...]
Buffer = bytes | memoryview
Decoder = Callable[[Buffer], Args]
"""Decodes one opcode's argument bytes (exactly the request's, after the header); a struct's
bound ``unpack_from`` is one."""


class Op(NamedTuple):
    """How one opcode's arguments are laid out: the decoder and the names of what it returns.

    The names are what plugins see (``fsd.hookinfo.describe`` picks ``name``, ``newname``,
    ``target``, ``flags``, ``mode``, ``offset`` and ``size`` by name, and shows the inodes
    ``newdir``, ``oldnodeid`` and ``nodeid_out`` as paths), so a field is called one of those
    only where docs/hooks.md says plugins get it; ``_`` is padding.
    """

    #: ``None``: nothing to decode (GETATTR's flags, STATFS...), or WRITE, decoded apart
    #: because its data stays in the request's memory.
    decode: Decoder | None
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


class ExtendedRequest(Request):
    """A request that carried request extensions: the caller's supplementary group (the
    only extension granted, CREATE_SUPP_GROUP). A class of its own so that the other
    requests need no slot for it."""

    __slots__ = ("supp_gid",)

    def __init__(
        self,
        opcode: int,
        unique: int,
        nodeid: int,
        uid: int,
        gid: int,
        pid: int,
        args: Args,
        supp_gid: int | None,
    ) -> None:
        super().__init__(opcode, unique, nodeid, uid, gid, pid, args)
        self.supp_gid = supp_gid


class MalformedRequest(ProtocolError):
    """A request whose header is whole but whose length or arguments are not; the reply is
    ``errno`` for ``unique`` (none for an opcode that is never answered)."""

    def __init__(self, message: str, opcode: int, unique: int, nodeid: int, code: int) -> None:
        super().__init__(message, code)
        self.opcode = opcode
        self.unique = unique
        self.nodeid = nodeid


def decode(readable: Segments, decoders: Mapping[int, Decoder | None] | None = None) -> Request:
    """Decode one request (header, then the opcode's arguments) from its segments.

    ``decoders`` are the session's (:func:`decoders_for`: what INIT granted changes a layout);
    ``None`` means the layouts before INIT.

    Raises ``BufferTooShort`` when not even the header is there (nothing can be answered)
    and :class:`MalformedRequest` when the length or the arguments are wrong (answer the
    errno). An opcode missing from :data:`OPS` decodes with no arguments (the server answers
    ENOSYS). The common layouts are read in place: one buffer (``/dev/fuse``) or the header
    and the arguments in two segments (Linux's virtio_fs); anything else is gathered first.
    """
    first = readable[0] if readable else _EMPTY
    if len(first) >= _HEADER:
        header = _unpack_header(first)
    else:
        header = _unpack_header(gather(readable, 0, _HEADER))
    length, opcode, unique, nodeid, uid, gid, pid, extlen, _pad = header
    body_len = length - _HEADER
    extensions: Buffer = _EMPTY
    try:
        if body_len < 0:
            raise ProtocolError(f"in_header.len {length} is shorter than the header")
        if opcode == _WRITE:
            args = _write(readable, body_len)
        else:
            decoder = (_DECODERS if decoders is None else decoders).get(opcode)
            if decoder is None:
                if len(readable) == 1 and len(first) < length:
                    raise ProtocolError(f"in_header.len {length} does not match the request")
                args = ()
            else:
                if len(readable) == 1:
                    if len(first) < length:
                        raise ProtocolError(f"in_header.len {length} does not match the request")
                    body: Buffer = first[_HEADER:length]
                elif len(readable) == 2 and len(first) == _HEADER:
                    body = readable[1]
                    if len(body) != body_len:
                        if len(body) < body_len:
                            raise ProtocolError(f"in_header.len {length} does not match")
                        body = body[:body_len]
                else:
                    body = gather(readable, _HEADER, body_len)
                if extlen:  # the extensions follow the arguments
                    split = len(body) - 8 * extlen
                    if split < 0:
                        raise ProtocolError(f"{extlen * 8} bytes of extensions in {length}")
                    body, extensions = body[:split], body[split:]
                args = decoder(body)
        if extlen and extensions:
            supp_gid = _supplementary_group(extensions)
            return ExtendedRequest(opcode, unique, nodeid, uid, gid, pid, args, supp_gid)
    except (ProtocolError, BufferTooShort, struct.error) as exc:
        code = exc.errno if isinstance(exc, ProtocolError) else errno.EINVAL
        raise MalformedRequest(str(exc), opcode, unique, nodeid, code) from None
    return Request(opcode, unique, nodeid, uid, gid, pid, args)


def _supplementary_group(extensions: Buffer) -> int | None:
    """The first group of a fuse_supp_groups extension, if there is one; other extension
    types are skipped (none else is granted), a malformed list is refused."""
    offset, end = 0, len(extensions)
    while offset < end:
        size, kind = EXT_HEADER.unpack_from(extensions, offset)
        if size < EXT_HEADER.size or size % 8 or offset + size > end:
            raise ProtocolError(f"request extension of {size} bytes at {offset}")
        if kind == EXT_GROUPS:
            (count,) = _U32.unpack_from(extensions, offset + EXT_HEADER.size)
            if count and size >= EXT_HEADER.size + 8:
                (group,) = _U32.unpack_from(extensions, offset + EXT_HEADER.size + 4)
                return int(group)
            return None
        offset += size
    return None


# --- decoders: the argument bytes (copied where they are kept) to values ---------------------


def _fixed_then_name(st: struct.Struct) -> Decoder:
    """A struct, then a NUL-terminated name (MKDIR, MKNOD, CREATE, LINK)."""
    unpack, size = st.unpack_from, st.size

    def decode(body: Buffer) -> Args:
        return (*unpack(body), parse_name(bytes(body[size:])))

    return decode


def _fixed_then_two_names(st: struct.Struct) -> Decoder:
    """A struct, then ``old\\0new\\0`` (RENAME, RENAME2)."""
    unpack, size = st.unpack_from, st.size

    def decode(body: Buffer) -> Args:
        return (*unpack(body), *parse_two_names(bytes(body[size:])))

    return decode


def _lookup(body: Buffer) -> Args:
    # NFS-style lookups of "." and ".." are legitimate here; the filesystem resolves them.
    return (parse_name(bytes(body), allow_dots=True),)


def _name(body: Buffer) -> Args:
    return (parse_name(bytes(body)),)


def _symlink(body: Buffer) -> Args:
    return parse_symlink(bytes(body))


def _init(body: Buffer) -> Args:
    """``fuse_init_in`` is 8, 16 or 64 bytes by protocol version; ``flags2`` (read only with
    INIT_EXT) becomes the high half of ``flags``."""
    n = len(body)
    if n >= INIT_IN.size:
        major, minor, readahead, flags, flags2 = INIT_IN.unpack_from(body)
        if flags & InitFlag.INIT_EXT:
            flags |= flags2 << 32
    elif n >= INIT_IN_V2.size:
        major, minor, readahead, flags = INIT_IN_V2.unpack_from(body)
    elif n >= INIT_IN_V1.size:
        (major, minor), readahead, flags = INIT_IN_V1.unpack_from(body), 0, 0
    else:
        raise ProtocolError("INIT shorter than 8 bytes")
    return major, minor, readahead, flags


def _batch_forget(body: Buffer) -> Args:
    count, _ = BATCH_FORGET_IN.unpack_from(body)
    count = min(count, (len(body) - BATCH_FORGET_IN.size) // FORGET_ONE.size)
    items = FORGET_ONE.iter_unpack(body[BATCH_FORGET_IN.size : BATCH_FORGET_IN.size + 16 * count])
    return (tuple(items),)


def _setattr(body: Buffer) -> Args:
    (valid, _, fh, size, _lock, atime, mtime, _ctime, atimensec, mtimensec, _ctimensec, mode,
     _, uid, gid, _) = SETATTR_IN.unpack_from(body)  # fmt: skip
    return SetattrArgs(
        valid, fh, size, atime * _NSEC + atimensec, mtime * _NSEC + mtimensec, mode, uid, gid
    )


def _write(readable: Segments, body_len: int) -> Args:
    """WRITE: ``fuse_write_in``, then the data, handed on as views of the request's memory
    (whole segments where Linux put each page in a descriptor of its own)."""
    start = _HEADER + WRITE_IN.size
    data: Segments | None = None
    if len(readable) > 1 and len(readable[0]) == _HEADER and len(readable[1]) == WRITE_IN.size:
        fh, offset, size, write_flags, lock_owner, flags, _ = WRITE_IN.unpack_from(readable[1])
        data = readable[2:]
        if sum(map(len, data)) != size:  # not exactly the data (a test's odd cut, say)
            data = None
    else:
        fields = WRITE_IN.unpack(gather(readable, _HEADER, WRITE_IN.size))
        fh, offset, size, write_flags, lock_owner, flags, _ = fields
    if size > body_len - WRITE_IN.size:
        raise ProtocolError(f"WRITE of {size} bytes in a {body_len}-byte request")
    if data is None:
        data = views(readable, start, size)
    return fh, offset, size, write_flags, lock_owner, flags, data


def _getxattr(body: Buffer) -> Args:
    size, _ = GETXATTR_IN.unpack_from(body)
    return size, parse_xattr_name(bytes(body[GETXATTR_IN.size :]))


def _setxattr(body: Buffer) -> Args:
    """The 8-byte compat ``fuse_setxattr_in``: SETXATTR_EXT not granted, no setxattr_flags."""
    size, flags = SETXATTR_IN.unpack_from(body)
    return (*_xattr_name_and_value(body, SETXATTR_IN.size, size), flags, 0)


def _setxattr_ext(body: Buffer) -> Args:
    """The 16-byte ``fuse_setxattr_in`` of SETXATTR_EXT, whose ``setxattr_flags`` carry
    ACL_KILL_SGID (granted with POSIX ACLs)."""
    size, flags, setxattr_flags, _ = SETXATTR_EXT_IN.unpack_from(body)
    return (*_xattr_name_and_value(body, SETXATTR_EXT_IN.size, size), flags, setxattr_flags)


def _xattr_name_and_value(body: Buffer, start: int, size: int) -> tuple[bytes, bytes]:
    """``name\\0`` then ``size`` bytes of value, after SETXATTR's fixed part."""
    rest = bytes(body[start:])
    name = parse_xattr_name(rest)
    start = len(name) + 1
    if size > XATTR_SIZE_MAX:
        raise ProtocolError("xattr value too large", errno.E2BIG)
    if len(rest) < start + size:
        raise ProtocolError(f"setxattr value shorter than {size} bytes")
    return name, rest[start : start + size]


def _xattr_name(body: Buffer) -> Args:
    return (parse_xattr_name(bytes(body)),)


_READ_FIELDS: Final = ("fh", "offset", "size", "read_flags", "lock_owner", "open_flags", "_")
_LK_FIELDS: Final = ("fh", "owner", "start", "end", "type", "lk_pid", "lk_flags", "_")

#: Every opcode the server decodes: the decoder and the names of the values it returns.
OPS: Final[dict[int, Op]] = {
    Opcode.INIT: Op(_init, ("major", "minor", "max_readahead", "init_flags")),
    Opcode.DESTROY: Op(None, ()),
    Opcode.LOOKUP: Op(_lookup, ("name",)),
    Opcode.FORGET: Op(FORGET_IN.unpack_from, ("nlookup",)),
    Opcode.BATCH_FORGET: Op(_batch_forget, ("forgets",)),
    Opcode.INTERRUPT: Op(INTERRUPT_IN.unpack_from, ("interrupted",)),
    Opcode.GETATTR: Op(None, ()),
    Opcode.STATX: Op(STATX_IN.unpack_from, ("getattr_flags", "_", "fh", "sx_flags", "sx_mask")),
    Opcode.SETATTR: Op(_setattr, SetattrArgs._fields),
    Opcode.READLINK: Op(None, ()),
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
    Opcode.OPEN: Op(OPEN_IN.unpack_from, ("flags", "open_flags")),
    Opcode.CREATE: Op(
        _fixed_then_name(CREATE_IN), ("flags", "mode", "umask", "open_flags", "name")
    ),
    Opcode.TMPFILE: Op(CREATE_IN.unpack_from, ("flags", "mode", "umask", "open_flags")),
    Opcode.READ: Op(READ_IN.unpack_from, _READ_FIELDS),
    Opcode.WRITE: Op(
        None, ("fh", "offset", "size", "write_flags", "lock_owner", "open_flags", "data")
    ),
    Opcode.FLUSH: Op(FLUSH_IN.unpack_from, ("fh", "_", "_", "lock_owner")),
    Opcode.RELEASE: Op(RELEASE_IN.unpack_from, ("fh", "open_flags", "release_flags", "lock_owner")),
    Opcode.FSYNC: Op(FSYNC_IN.unpack_from, ("fh", "fsync_flags", "_")),
    Opcode.GETLK: Op(LK_IN.unpack_from, _LK_FIELDS),
    Opcode.SETLK: Op(LK_IN.unpack_from, _LK_FIELDS),
    Opcode.SETLKW: Op(LK_IN.unpack_from, _LK_FIELDS),
    Opcode.FALLOCATE: Op(
        FALLOCATE_IN.unpack_from, ("fh", "offset", "length", "fallocate_mode", "_")
    ),
    Opcode.LSEEK: Op(LSEEK_IN.unpack_from, ("fh", "offset", "whence", "_")),
    Opcode.COPY_FILE_RANGE: Op(
        COPY_FILE_RANGE_IN.unpack_from,
        ("fh", "off_in", "nodeid_out", "fh_out", "offset", "size", "copy_flags"),
    ),
    Opcode.OPENDIR: Op(OPEN_IN.unpack_from, ("flags", "open_flags")),
    Opcode.READDIR: Op(READ_IN.unpack_from, _READ_FIELDS),
    Opcode.READDIRPLUS: Op(READ_IN.unpack_from, _READ_FIELDS),
    Opcode.RELEASEDIR: Op(
        RELEASE_IN.unpack_from, ("fh", "open_flags", "release_flags", "lock_owner")
    ),
    Opcode.FSYNCDIR: Op(FSYNC_IN.unpack_from, ("fh", "fsync_flags", "_")),
    Opcode.STATFS: Op(None, ()),
    Opcode.ACCESS: Op(ACCESS_IN.unpack_from, ("mask", "_")),
    Opcode.SYNCFS: Op(None, ()),
    Opcode.GETXATTR: Op(_getxattr, ("reply_size", "xattr")),
    Opcode.LISTXATTR: Op(GETXATTR_IN.unpack_from, ("reply_size", "_")),
    Opcode.SETXATTR: Op(_setxattr, ("xattr", "value", "xattr_flags", "setxattr_flags")),
    Opcode.REMOVEXATTR: Op(_xattr_name, ("xattr",)),
    Opcode.IOCTL: Op(
        IOCTL_IN.unpack_from, ("fh", "ioctl_flags", "cmd", "arg", "in_size", "out_size")
    ),
}

_DECODERS: Final = {opcode: op.decode for opcode, op in OPS.items()}
_EXT_DECODERS: Final = _DECODERS | {Opcode.SETXATTR: _setxattr_ext}


def decoders_for(flags: int) -> Mapping[int, Decoder | None]:
    """The decoders of a session that was granted INIT ``flags``: SETXATTR_EXT lengthens
    ``fuse_setxattr_in`` by 8 bytes."""
    return _EXT_DECODERS if flags & InitFlag.SETXATTR_EXT else _DECODERS
