"""The status socket (``--status-socket PATH``): a read-only view of the daemon over HTTP.

A Unix stream socket, mode 0600 like the daemon's other sockets, answering one ``GET`` per
connection: ``/status`` the JSON document (:mod:`fsd.status.snapshot`), ``/metrics`` the
Prometheus exposition, ``/`` the human-readable text. Nothing it accepts changes the daemon,
so it is kept apart from the allowlist control socket, which grants access to host files:
monitoring can be given this one without that one.

Each client is a task in the daemon's nursery that builds the document on the trio thread
when asked; the queues keep serving meanwhile. A client gets ``TIMEOUT`` seconds for the
whole exchange and at most ``MAX_CLIENTS`` are served at once (the rest wait in the listen
backlog), so a stuck or flooding client costs bounded memory and no request time.
"""

from __future__ import annotations

import json
import logging
import os
import socket as stdlib_socket
from typing import Any, Final, NoReturn

import trio

from fsd.status import prometheus, text
from fsd.status.http import MAX_HEAD, HttpError, encode_response, head_complete, parse_request_head
from fsd.status.snapshot import DaemonStatus
from fsd.unix_sockets import Listener, accept_client, listen_unix

__all__ = [
    "MAX_CLIENTS",
    "ROUTES",
    "SOCKET_MODE",
    "TIMEOUT",
    "bind_status_socket",
    "render",
    "serve_status",
]

log = logging.getLogger("fsd.status")

SOCKET_MODE: Final = 0o600
TIMEOUT: Final = 5.0
MAX_CLIENTS: Final = 16
JSON_TYPE: Final = "application/json"
TEXT_TYPE: Final = "text/plain; charset=utf-8"
ROUTES: Final = {
    "/status": "the status document as JSON",
    "/metrics": "the Prometheus text exposition",
    "/": "the status for a person (what `fsd status` prints)",
}


def render(doc: dict[str, Any], path: str) -> tuple[bytes, str]:
    """The body and content type ``path`` asks for; HttpError 404 for an unknown path."""
    if path == "/status":
        return json.dumps(doc, indent=1, sort_keys=False).encode() + b"\n", JSON_TYPE
    if path == "/metrics":
        return prometheus.render(doc).encode(), prometheus.CONTENT_TYPE
    if path == "/":
        return text.render(doc).encode(), TEXT_TYPE
    known = ", ".join(ROUTES)
    raise HttpError(404, f"no such path {path!r}; this socket serves {known}")


def answer(status: DaemonStatus, head: bytes) -> bytes:
    """The whole response to one request head (pure but for reading ``status``)."""
    try:
        method, path = parse_request_head(head)
        if method != "GET":
            raise HttpError(405, f"{method}: the status socket only answers GET")
        if path not in ROUTES:
            raise HttpError(404, f"no such path {path!r}; this socket serves {', '.join(ROUTES)}")
        body, content_type = render(status.snapshot(), path)
    except HttpError as exc:
        extra = {"Allow": "GET"} if exc.status == 405 else None
        return encode_response(exc.status, f"{exc}\n".encode(), TEXT_TYPE, extra)
    return encode_response(200, body, content_type)


async def serve_status(
    socket_path: str | os.PathLike[str],
    status: DaemonStatus,
    *,
    mode: int = SOCKET_MODE,
    listener: stdlib_socket.socket | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve the status socket at ``socket_path`` until cancelled, then remove it (a stale
    file is replaced, a live socket or another file refused, as for the other sockets).
    ``listener``: the socket already bound there (:func:`bind_status_socket`, before the
    sandbox); its file is then the binder's to remove."""
    path = os.fspath(socket_path)
    owned = None
    if listener is None:
        owned = bind_status_socket(path, mode=mode)
        listener = owned.sock
    sock = trio.socket.from_stdlib_socket(listener)
    try:
        async with trio.open_nursery() as nursery:
            log.info("status: socket listening on %s", path)
            task_status.started(path)
            slots = trio.Semaphore(MAX_CLIENTS)
            while True:
                await slots.acquire()
                try:
                    connection = await accept_client(sock, "status")
                except BaseException:
                    slots.release()
                    raise
                nursery.start_soon(_serve_client, connection, status, slots)
    finally:
        sock.close()
        if owned is not None:
            owned.remove()


def bind_status_socket(path: str, *, mode: int = SOCKET_MODE) -> Listener:
    """Bind the status socket, restricted before it listens."""
    return listen_unix(path, stdlib_socket.SOCK_STREAM, MAX_CLIENTS, mode=mode)


async def _serve_client(
    connection: trio.socket.SocketType, status: DaemonStatus, slots: trio.Semaphore
) -> None:
    """Read one request head, answer it, hang up; errors end only this client."""
    try:
        with connection, trio.move_on_after(TIMEOUT):
            head = b""
            while not head_complete(head) and len(head) <= MAX_HEAD:
                chunk = await connection.recv(4096)
                if not chunk:
                    return  # the client left before asking anything
                head += chunk
            try:
                reply = answer(status, head)
            except Exception:
                log.exception("status: building the answer failed")
                reply = encode_response(500, b"internal error; see the daemon's log\n", TEXT_TYPE)
            view = memoryview(reply)
            while view:
                view = view[await connection.send(view) :]
    except OSError as exc:  # the client hung up mid-answer
        log.debug("status: client dropped: %s", exc)
    finally:
        slots.release()
