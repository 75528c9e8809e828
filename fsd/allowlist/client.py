"""Talk to an allowlist control socket (fsd's or crosvm's): Python API and ``fsd allowlist``.

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

import argparse
import builtins
import os
import socket
import sys
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


def _result(request: Request, packet: bytes) -> Ok | Paths:
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
        return _result(request, self.request(encode_request(request)))

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
        return _result(request, await self.request(encode_request(request)))

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fsd allowlist",
        description="Change which paths of a running fsd (or crosvm) share the guest may see. "
        "Paths are relative to the shared directory and start with '/'. Prints the "
        "server's JSON answer; exits 0 only if the request was accepted.",
    )
    parser.add_argument("--socket", required=True, metavar="CTRL", help="allowlist socket path")
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help="seconds (default 10)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = commands.add_parser("add", help="allow paths and everything below them")
    add.add_argument("paths", nargs="+", metavar="PATH")
    remove = commands.add_parser("remove", help="revoke previously added paths")
    remove.add_argument("paths", nargs="+", metavar="PATH")
    commands.add_parser("list", help="print the added paths (fsd extension)")
    return parser


def _seconds(text: str) -> float:
    """A positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def main(argv: list[str]) -> int:
    """``fsd allowlist --socket CTRL add|remove|list PATH...``; ``argv`` excludes the program."""
    args = _parser().parse_args(argv)
    request: Request
    if args.command == "add":
        request = AddPaths(tuple(args.paths))
    elif args.command == "remove":
        request = RemovePaths(tuple(args.paths))
    else:
        request = ListPaths()
    try:
        with AllowlistClient(args.socket, timeout=args.timeout) as client:
            answer = client.request(encode_request(request))
    except OSError as exc:
        print(f"fsd allowlist: {args.socket}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(answer.decode("utf-8", "replace"))
    try:
        _result(request, answer)
    except AllowlistError:
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
