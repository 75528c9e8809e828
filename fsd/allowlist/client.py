"""Talk to an allowlist control socket (fsd's or crosvm's) from Python.

The ``fsd allowlist`` command built on it is :mod:`fsd.cli.allowlist`.

Sync::

    with AllowlistClient("/run/fsd/allowlist.sock") as client:
        client.add(["/projects/demo"])
        print(client.list())          # fsd only: ["/projects/demo"]
        client.remove(["/projects/demo"])

Async (trio)::

    async with AsyncAllowlistClient(path) as client:
        await client.add(["/projects/demo"])

A refused request raises ``AllowlistError`` carrying the server's message. Both clients keep
one connection open for all their requests and reconnect after an error.
"""

from __future__ import annotations

import builtins
import os
import socket
from collections.abc import Iterable
from types import TracebackType
from typing import Self

import trio

from fsd.allowlist._sockbuf import enlarge_send_buffer
from fsd.allowlist.protocol import (
    AddPaths,
    Err,
    ListPaths,
    Ok,
    Paths,
    ProtocolError,
    RemovePaths,
    Request,
    Response,
    decode_response,
    encode_request,
)

DEFAULT_TIMEOUT = 10.0
_PEEK_SIZE = socket.MSG_PEEK | socket.MSG_TRUNC


class AllowlistError(Exception):
    """The server refused a request (``{"Err": message}``) or did not answer properly."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def check_response(request: Request, packet: bytes) -> Ok | Paths:
    """Check a response packet answers ``request``; raise ``AllowlistError`` otherwise."""
    try:
        response: Response = decode_response(packet)
    except ProtocolError as exc:
        raise AllowlistError(f"invalid response: {exc}") from None
    if isinstance(response, Err):
        raise AllowlistError(response.message)
    if isinstance(response, Paths) is isinstance(request, ListPaths):
        return response
    raise AllowlistError(f"unexpected response {packet.decode('utf-8', 'replace')}")


def _paths(result: Ok | Paths) -> builtins.list[str]:
    return builtins.list(result.paths) if isinstance(result, Paths) else []


class AllowlistClient:
    """A blocking client; ``timeout`` (seconds, None for none) bounds each send and receive."""

    def __init__(
        self, socket_path: str | os.PathLike[str], *, timeout: float | None = DEFAULT_TIMEOUT
    ) -> None:
        self.socket_path = os.fspath(socket_path)
        self.timeout = timeout
        self._sock: socket.socket | None = None

    def add(self, paths: Iterable[str]) -> None:
        """Allow these share paths (``/a/b`` means ``<shared-dir>/a/b``) and their subtrees."""
        self._call(AddPaths(tuple(paths)))

    def remove(self, paths: Iterable[str]) -> None:
        """Revoke these explicitly added paths; all or nothing."""
        self._call(RemovePaths(tuple(paths)))

    def list(self) -> list[str]:
        """The explicitly added paths (an fsd extension; crosvm hangs up)."""
        return _paths(self._call(ListPaths()))

    def request(self, packet: bytes) -> bytes:
        """Send one raw packet and return the raw answer packet."""
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            sock.settimeout(self.timeout)
            enlarge_send_buffer(sock)
            try:
                sock.connect(self.socket_path)
            except BaseException:
                sock.close()
                raise
            self._sock = sock
        try:
            self._sock.sendall(packet)
            size, _, _, _ = self._sock.recvmsg_into([bytearray()], 0, _PEEK_SIZE)
            answer = self._sock.recv(size)
            if not answer:
                raise ConnectionError("the allowlist server closed the connection")
        except BaseException:
            self.close()
            raise
        return answer

    def _call(self, request: Request) -> Ok | Paths:
        return check_response(request, self.request(encode_request(request)))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncAllowlistClient:
    """The trio client; use ``trio.fail_after`` around calls for timeouts."""

    def __init__(self, socket_path: str | os.PathLike[str]) -> None:
        self.socket_path = os.fspath(socket_path)
        self._sock: trio.socket.SocketType | None = None

    async def add(self, paths: Iterable[str]) -> None:
        """Allow these share paths and their subtrees."""
        await self._call(AddPaths(tuple(paths)))

    async def remove(self, paths: Iterable[str]) -> None:
        """Revoke these explicitly added paths; all or nothing."""
        await self._call(RemovePaths(tuple(paths)))

    async def list(self) -> list[str]:
        """The explicitly added paths (fsd extension)."""
        return _paths(await self._call(ListPaths()))

    async def request(self, packet: bytes) -> bytes:
        """Send one raw packet and return the raw answer packet."""
        if self._sock is None:
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            enlarge_send_buffer(sock)
            try:
                await sock.connect(self.socket_path)
            except BaseException:
                sock.close()
                raise
            self._sock = sock
        try:
            await self._sock.send(packet)
            size, _, _, _ = await self._sock.recvmsg_into([bytearray()], 0, _PEEK_SIZE)
            answer = await self._sock.recv(size)
            if not answer:
                raise ConnectionError("the allowlist server closed the connection")
        except BaseException:
            await self.aclose()
            raise
        return answer

    async def _call(self, request: Request) -> Ok | Paths:
        return check_response(request, await self.request(encode_request(request)))

    async def aclose(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
