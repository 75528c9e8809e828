"""Plugin hooks around the FUSE server: check before a request runs, audit after it ran.

:func:`make_request_handler` is what a transport asks for its per-request callable. With no
plugin implementing a FUSE hook it returns ``server.handle`` itself, so an unused plugin
system costs nothing per request. Otherwise :class:`HookedHandler` decodes the request's
header, fixed arguments and names (never WRITE data) into a :class:`FuseRequestInfo`, asks the
check hooks, then lets the server run the request untouched and reads the outcome back from
the reply it wrote.

Hooks run inline on the queue's thread: a slow hook delays that queue's requests.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from fsd.fuse.abi import (
    COPY_FILE_RANGE_IN,
    CREATE_IN,
    FATTR_MODE,
    IN_HEADER,
    LINK_IN,
    MKDIR_IN,
    MKNOD_IN,
    OPEN_IN,
    OUT_HEADER,
    READ_IN,
    RENAME2_IN,
    RENAME_IN,
    SETATTR_IN,
    WRITE_OUT,
    Opcode,
)
from fsd.hookinfo import FuseRequestInfo, op_class_of, writes_of
from fsd.sgbuf import BufferTooShort, SgReader, SgWriter

if TYPE_CHECKING:
    from fsd.fuse.server import FuseServer, Transport
    from fsd.plugins import Plugins

__all__ = ["HookedHandler", "RequestHandler", "describe_request", "make_request_handler"]

log = logging.getLogger("fsd.plugins")

RequestHandler = Callable[[SgReader, SgWriter], int]
"""Serves one request: reads it, writes the reply, returns the reply length (0: none)."""

PathOf = Callable[[int], "str | None"]

_HDR: Final = IN_HEADER.size
_OUT: Final = OUT_HEADER.size
#: Requests that never get a reply, so a check cannot deny them.
_NO_REPLY: Final = frozenset({Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.INTERRUPT,
                              Opcode.NOTIFY_REPLY})  # fmt: skip
#: Session requests no check may deny (they are still audited): a denied or failed INIT
#: leaves the guest without a filesystem while the daemon stays up, with nothing but a log
#: line to say why; DESTROY ends the session, and refusing that protects nothing.
_SESSION: Final = frozenset({Opcode.INIT, Opcode.DESTROY})
#: Enough of any non-WRITE request for its structs and names (two names and a symlink target).
_PEEK_MAX: Final = _HDR + 64 + 2 * 1025 + 4097
_OP_NAMES: Final = {int(op): op.name for op in Opcode}
#: Requests whose arguments describe_request decodes.
_WITH_ARGS: Final = frozenset(
    int(op)
    for op in (Opcode.LOOKUP, Opcode.UNLINK, Opcode.RMDIR, Opcode.MKDIR, Opcode.MKNOD,
               Opcode.CREATE, Opcode.SYMLINK, Opcode.RENAME, Opcode.RENAME2, Opcode.LINK,
               Opcode.OPEN, Opcode.OPENDIR, Opcode.READ, Opcode.WRITE, Opcode.READDIR,
               Opcode.READDIRPLUS, Opcode.SETATTR, Opcode.COPY_FILE_RANGE)
)  # fmt: skip
_LEN_OPCODE: Final = struct.Struct("<II")
_DATA_REPLIES: Final = frozenset({Opcode.WRITE, Opcode.COPY_FILE_RANGE})


class _Malformed(ValueError):
    """The request's arguments cannot be decoded; the server would refuse it too."""


def _names(buf: bytes | memoryview, start: int, end: int, count: int) -> list[str]:
    """``count`` NUL-terminated strings from ``buf[start:end]``."""
    body = bytes(buf[start:end])
    parts = body.split(b"\0", count)
    if len(parts) <= count:
        raise _Malformed("name without NUL terminator")
    return [os.fsdecode(p) for p in parts[:count]]


def _unpack(st: struct.Struct, buf: bytes | memoryview, end: int) -> tuple[Any, ...]:
    if _HDR + st.size > end:
        raise _Malformed(f"request shorter than its {st.size}-byte arguments")
    return st.unpack_from(buf, _HDR)


def describe_request(
    buf: bytes | memoryview, path_of: PathOf, transport: Transport
) -> FuseRequestInfo:
    """Decode a request's header and arguments (``buf`` holds at least those) for the hooks.

    Raises ``BufferTooShort`` without a whole header and ``_Malformed`` (a ``ValueError``) when
    the arguments are cut short or a name lacks its NUL: the server refuses those with EINVAL.
    """
    if len(buf) < _HDR:
        raise BufferTooShort("request shorter than fuse_in_header")
    length, opcode, unique, nodeid, uid, gid, pid, _, _ = IN_HEADER.unpack_from(buf)
    end = min(length, len(buf))
    op = _OP_NAMES.get(opcode) or f"OPCODE_{opcode}"
    path = path_of(nodeid)
    extra: dict[str, Any] = {}
    flags: int | None = None
    if opcode not in _WITH_ARGS:
        pass
    elif opcode in (Opcode.LOOKUP, Opcode.UNLINK, Opcode.RMDIR):
        (extra["name"],) = _names(buf, _HDR, end, 1)
    elif opcode == Opcode.MKDIR:
        extra["mode"], _ = _unpack(MKDIR_IN, buf, end)
        (extra["name"],) = _names(buf, _HDR + MKDIR_IN.size, end, 1)
    elif opcode == Opcode.MKNOD:
        extra["mode"], _, _, _ = _unpack(MKNOD_IN, buf, end)
        (extra["name"],) = _names(buf, _HDR + MKNOD_IN.size, end, 1)
    elif opcode == Opcode.CREATE:
        flags, extra["mode"], _, _ = _unpack(CREATE_IN, buf, end)
        (extra["name"],) = _names(buf, _HDR + CREATE_IN.size, end, 1)
    elif opcode == Opcode.SYMLINK:
        extra["name"], extra["target"] = _names(buf, _HDR, end, 2)
    elif opcode == Opcode.RENAME:
        (newdir,) = _unpack(RENAME_IN, buf, end)
        extra["name"], extra["newname"] = _names(buf, _HDR + RENAME_IN.size, end, 2)
        extra["new_path"] = path_of(newdir)
    elif opcode == Opcode.RENAME2:
        newdir, flags, _ = _unpack(RENAME2_IN, buf, end)
        extra["name"], extra["newname"] = _names(buf, _HDR + RENAME2_IN.size, end, 2)
        extra["new_path"] = path_of(newdir)
    elif opcode == Opcode.LINK:
        (oldnodeid,) = _unpack(LINK_IN, buf, end)
        (extra["newname"],) = _names(buf, _HDR + LINK_IN.size, end, 1)
        extra["new_path"] = path
        path = path_of(oldnodeid)
    elif opcode in (Opcode.OPEN, Opcode.OPENDIR):
        flags, _ = _unpack(OPEN_IN, buf, end)
    elif opcode in (Opcode.READ, Opcode.WRITE, Opcode.READDIR, Opcode.READDIRPLUS):
        _, extra["offset"], extra["size"], _, _, _, _ = _unpack(READ_IN, buf, end)
    elif opcode == Opcode.SETATTR:
        values = _unpack(SETATTR_IN, buf, end)
        flags = values[0]
        if flags & FATTR_MODE:
            extra["mode"] = values[11]
    elif opcode == Opcode.COPY_FILE_RANGE:
        _, _, nodeid_out, _, off_out, size, _ = _unpack(COPY_FILE_RANGE_IN, buf, end)
        extra["new_path"], extra["offset"], extra["size"] = path_of(nodeid_out), off_out, size
    op_class = op_class_of(opcode, flags)
    return FuseRequestInfo(
        op, opcode, unique, nodeid, path, uid, gid, pid, transport, op_class,
        writes=writes_of(opcode, flags),
        flags=flags, **extra,
    )  # fmt: skip


def _peek(views: list[memoryview], want: int) -> bytes:
    """The first ``want`` request bytes (or all there are), gathered from the segments."""
    out = bytearray()
    for view in views:
        out += view[: want - len(out)]
        if len(out) >= want:
            break
    return bytes(out)


class HookedHandler:
    """``server.handle`` with the FUSE check and audit hooks around it. Never raises."""

    def __init__(
        self,
        server: FuseServer,
        plugins: Plugins,
        transport: Transport | None = None,
        *,
        serve: RequestHandler | None = None,
    ) -> None:
        self.server = server
        #: What serves the request between the hooks: ``server.handle``, or the daemon's
        #: serialized version of it, so hooks run outside the lock shared by all queues.
        self._serve = serve if serve is not None else server.handle
        self.plugins = plugins
        self.transport: Transport = transport or server.transport
        self._inodes = server.fs.inodes
        self._no_reply = (
            _NO_REPLY | {Opcode.DESTROY} if self.transport == "vhost-user" else _NO_REPLY
        )
        self._unchecked = self._no_reply | _SESSION

    def _path_of(self, nodeid: int) -> str | None:
        try:
            path = self._inodes.get(nodeid).path
        except OSError:
            return None
        return "/" + path.decode("utf-8", "surrogateescape")  # os.fsdecode, minus a call

    def handle(self, request: SgReader, reply: SgWriter) -> int:
        """Check, serve, audit one request; see the module docstring."""
        views = request.take_views(request.remaining)
        first = views[0] if views else b""
        try:
            if len(first) >= _HDR:
                length, opcode = _LEN_OPCODE.unpack_from(first)
                want = _HDR + READ_IN.size if opcode == Opcode.WRITE else _PEEK_MAX
                head = first if len(first) >= min(length, want) else _peek(views, want)
            else:
                head = _peek(views, _PEEK_MAX)
            info = describe_request(head, self._path_of, self.transport)
        except BufferTooShort:
            return self._serve(SgReader(views), reply)  # it logs and drops it
        except ValueError as exc:
            return self._malformed(views, reply, exc)
        except Exception:
            log.exception("cannot describe a FUSE request for the plugins; answering EIO")
            return self._refuse(views, reply, errno.EIO)
        plugins = self.plugins
        if plugins.has_fuse_check and info.opcode not in self._unchecked:
            denied = plugins.fuse_check(info)
            if denied:
                size = _error_reply(reply, denied, info.unique)
                if plugins.has_fuse_audit:
                    plugins.fuse_audit(info, denied, 0)
                return size
        size = self._serve(SgReader(views), reply)
        if plugins.has_fuse_audit:
            error, moved = _outcome(info.opcode, reply, size)
            plugins.fuse_audit(info, error, moved)
        return size

    def _malformed(self, views: list[memoryview], reply: SgWriter, exc: Exception) -> int:
        """Arguments the hooks cannot see are arguments the server must not act on."""
        log.warning("malformed FUSE request: %s", exc)
        return self._refuse(views, reply, errno.EINVAL)

    def _refuse(self, views: list[memoryview], reply: SgWriter, error: int) -> int:
        head = _peek(views, 16)
        if len(head) < 16:
            return 0
        _, opcode, unique = struct.unpack_from("<IIQ", head)
        if opcode in self._no_reply:
            return 0
        return _error_reply(reply, error, unique)


def _error_reply(reply: SgWriter, error: int, unique: int) -> int:
    try:
        reply.pack_at(OUT_HEADER, 0, _OUT, -error, unique)
    except BufferTooShort:
        log.warning("no room for an error reply to unique %d", unique)
        return 0
    return _OUT


def _outcome(opcode: int, reply: SgWriter, size: int) -> tuple[int, int]:
    """(errno, data bytes moved) read back from the reply the server wrote."""
    if size < _OUT:
        return 0, 0
    head = reply.views(0, _OUT)
    _, error, _ = OUT_HEADER.unpack(head[0] if len(head) == 1 else b"".join(head))
    if error:
        return -error, 0
    if opcode == Opcode.READ:
        return 0, size - _OUT
    if opcode in _DATA_REPLIES and size >= _OUT + WRITE_OUT.size:
        written, _ = WRITE_OUT.unpack(b"".join(reply.views(_OUT, WRITE_OUT.size)))
        return 0, written
    return 0, 0


def make_request_handler(
    server: FuseServer, plugins: Plugins | None, serve: RequestHandler | None = None
) -> RequestHandler:
    """``serve`` (default ``server.handle``) itself when no plugin implements a FUSE hook,
    else a hooked one around it.

    Call it after every plugin is registered: the choice is made once, here. The daemon
    passes its serialized ``server.handle`` as ``serve``: hooks then run outside the lock that
    all queues share, so a slow or stuck plugin holds up only its own queue.
    """
    inner = serve if serve is not None else server.handle
    if plugins is None or not plugins.has_fuse_hooks:
        return inner
    return HookedHandler(server, plugins, serve=inner).handle
