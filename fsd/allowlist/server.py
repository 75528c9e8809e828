"""The allowlist control socket: SOCK_SEQPACKET, one JSON request per packet, one answer each.

Unlike crosvm, which serves one client at a time and drops a session on the first bad
packet, every client gets its own task and a bad packet gets an ``Err`` answer while the
session goes on. Requests are applied synchronously between awaits, so batches from
concurrent clients never interleave.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import socket as stdlib_socket
from typing import NoReturn

import trio

from fsd.allowlist._sockbuf import enlarge_send_buffer
from fsd.allowlist.handler import AfterHook, CheckHook, handle_packet
from fsd.allowlist.protocol import MAX_PACKET, Err, encode_response
from fsd.allowlist.trie import Allowlist
from fsd.unix_sockets import Listener, accept_client, listen_unix

logger = logging.getLogger("fsd.allowlist")

SOCKET_MODE = 0o600
"""Only the daemon's user may connect: the socket grants the guest access to host files."""

_clients = itertools.count(1)


async def serve_allowlist(
    socket_path: str | os.PathLike[str],
    allowlist: Allowlist,
    *,
    check: CheckHook | None = None,
    after: AfterHook | None = None,
    max_packet: int = MAX_PACKET,
    mode: int = SOCKET_MODE,
    listener: stdlib_socket.socket | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve the control socket at ``socket_path`` until cancelled, then remove it.

    A leftover socket file nobody listens on is replaced; a live one, or a file that is not
    a socket, makes startup fail. ``listener``: the socket already bound there and listening
    (:func:`bind_allowlist_socket`, before the sandbox); its file is then the binder's to
    remove. ``task_status.started()`` gets the path once clients can connect. ``check`` and
    ``after`` are the policy hooks of ``handle_packet``.
    """
    path = os.fspath(socket_path)
    owned = None
    if listener is None:
        owned = bind_allowlist_socket(path, mode=mode)
        listener = owned.sock
    sock = trio.socket.from_stdlib_socket(listener)
    try:
        async with trio.open_nursery() as nursery:
            logger.info("allowlist: control socket listening on %s", path, extra={"socket": path})
            task_status.started(path)
            serialize = trio.Lock()  # batches apply in order, one at a time
            while True:
                connection = await accept_client(sock, "allowlist")
                nursery.start_soon(
                    _serve_client, connection, allowlist, check, after, max_packet, serialize
                )
    finally:
        sock.close()
        if owned is not None:
            owned.remove()


def bind_allowlist_socket(path: str, *, mode: int = SOCKET_MODE) -> Listener:
    """Bind the SOCK_SEQPACKET control socket, restrict its permissions, then listen, so
    nobody can connect before the chmod."""
    return listen_unix(path, stdlib_socket.SOCK_SEQPACKET, 128, mode=mode)


def _peer(connection: trio.socket.SocketType) -> str:
    try:
        creds = connection.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_PEERCRED, 12)
    except OSError:
        return "unknown peer"
    pid, uid, gid = (int.from_bytes(creds[i : i + 4], "little") for i in (0, 4, 8))
    return f"pid={pid} uid={uid} gid={gid}"


async def _serve_client(
    connection: trio.socket.SocketType,
    allowlist: Allowlist,
    check: CheckHook | None,
    after: AfterHook | None,
    max_packet: int,
    one_change_at_a_time: trio.Lock,
) -> None:
    """Answer every packet of one client until it hangs up; errors only end this client."""
    client = f"client {next(_clients)} ({_peer(connection)})"
    logger.debug("allowlist: %s connected", client)
    with connection:
        enlarge_send_buffer(connection)
        while True:
            try:
                # No ancillary buffer: the kernel closes any fds a client sends.
                data, _, flags, _ = await connection.recvmsg(max_packet)
            except OSError as exc:
                logger.warning("allowlist: %s: receive failed: %s", client, exc)
                return
            truncated = bool(flags & stdlib_socket.MSG_TRUNC)
            if not data and not truncated:  # EOF; an empty packet reads the same, as in crosvm
                logger.debug("allowlist: %s disconnected", client)
                return
            # On a worker thread, one packet at a time: a slow policy hook (or a huge packet)
            # must not stall the trio thread, which also answers the VMM's vhost-user messages.
            async with one_change_at_a_time:
                outcome = await trio.to_thread.run_sync(
                    functools.partial(
                        handle_packet,
                        allowlist,
                        data,
                        truncated=truncated,
                        max_packet=max_packet,
                        check=check,
                        after=after,
                    )
                )
            if outcome.change is not None:
                logger.debug("allowlist: %s sent %s", client, outcome.change)
            if not await _send(connection, outcome.reply, client):
                return


async def _send(connection: trio.socket.SocketType, reply: bytes, client: str) -> bool:
    try:
        await connection.send(reply)
    except OSError as exc:
        if exc.errno != errno.EMSGSIZE:
            logger.warning("allowlist: %s: send failed: %s", client, exc)
            return False
        message = f"response of {len(reply)} bytes does not fit in one packet"
        logger.warning("allowlist: %s: %s", client, message)
        return await _send(connection, encode_response(Err(message)), client)
    return True
