"""Plugin hooks around the FUSE server: check before a request runs, audit after it ran.

:func:`make_request_handler` is what a transport asks for its per-request callable. With no
plugin implementing a FUSE hook it returns the server's own ``handle``, so an unused plugin
system costs nothing per request. Otherwise :class:`HookedHandler` decodes the request once
(:func:`fsd.fuse.requests.decode`), shows it to the check hooks as a
:class:`~fsd.hookinfo.FuseRequestInfo`, lets the server execute that same decoded request, and
gives the audit hooks the outcome the server recorded on it (errno, bytes moved).

Hooks run inline on the transport's thread: a slow hook delays that queue's requests.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from fsd.fuse.abi import Opcode
from fsd.fuse.requests import MalformedRequest, Request, decode
from fsd.hookinfo import describe
from fsd.sgbuf import BufferTooShort, Segments

if TYPE_CHECKING:
    from fsd.fuse.server import FuseServer
    from fsd.plugins import Plugins

__all__ = ["Executor", "HookedHandler", "RequestHandler", "make_request_handler"]

log = logging.getLogger("fsd.plugins")


RequestHandler = Callable[[Segments, Segments], int]
"""A transport's per-request callable: reads the request, writes the reply, returns its
length or ``NO_REPLY``/``DEFERRED`` (``FuseServer.handle`` is one)."""

Executor = Callable[[Request, Segments], int]
"""Serves a decoded request (``FuseServer.execute``, or the daemon's serialized version)."""

#: Requests no check may deny: those without a reply (nothing to deny with) and the session
#: requests, which are still audited. A denied or failed INIT leaves the guest without a
#: filesystem while the daemon stays up, with nothing but a log line to say why; DESTROY ends
#: the session, and refusing that protects nothing.
_UNCHECKED: Final = frozenset(
    {Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.INTERRUPT, Opcode.NOTIFY_REPLY, Opcode.INIT,
     Opcode.DESTROY}
)  # fmt: skip


class HookedHandler:
    """The server's request path with the FUSE check and audit hooks around it. Never raises."""

    def __init__(
        self, server: FuseServer, plugins: Plugins, *, execute: Executor | None = None
    ) -> None:
        self.server = server
        #: What serves the request between the hooks: ``server.execute``, or the daemon's
        #: serialized version of it, so hooks run outside the lock shared by all queues.
        self._execute = execute if execute is not None else server.execute
        self.plugins = plugins
        self.transport = server.transport
        self._path = server.fs.path

    def _path_of(self, nodeid: int) -> str | None:
        path = self._path(nodeid)
        if path is None:
            return None
        return "/" + path.decode("utf-8", "surrogateescape")  # os.fsdecode, minus a call

    def handle(self, request: Segments, reply: Segments) -> int:
        """Decode, check, execute, audit one request; see the module docstring."""
        try:
            req = decode(request, self.server.decoders)
        except (MalformedRequest, BufferTooShort) as exc:
            # Arguments the hooks cannot see are arguments the server must not act on.
            return self.server.refuse(exc, reply)
        try:
            info = describe(req, self._path_of, self.transport)
        except Exception:
            log.exception("cannot describe %r for the plugins; answering EIO", req)
            return self.server.error_reply(reply, errno.EIO, req.unique)
        plugins = self.plugins
        if plugins.has_fuse_check and req.opcode not in _UNCHECKED:
            denied = plugins.fuse_check(info)
            if denied:
                size = self.server.error_reply(reply, denied, req.unique)
                if plugins.has_fuse_audit:
                    plugins.fuse_audit(info, denied, 0)
                return size
        size = self._execute(req, reply)
        if plugins.has_fuse_audit:
            plugins.fuse_audit(info, req.error, req.moved)
        return size


def make_request_handler(server: FuseServer, plugins: Plugins | None) -> RequestHandler:
    """The transport's per-request callable: ``server.handle`` itself when no plugin
    implements a FUSE hook, else :class:`HookedHandler` around it (the hooks run outside the
    server's lock, so a slow or stuck plugin holds up only its own queue or thread).

    Call it after every plugin is registered: the choice is made once, here.
    """
    if plugins is None or not plugins.has_fuse_hooks:
        return server.handle
    return HookedHandler(server, plugins).handle
