"""The little HTTP the status socket speaks (pure: bytes in, values out).

Just enough HTTP/1.x for ``curl --unix-socket``, a Prometheus proxy and ``fsd status``: one
``GET`` per connection, answered with a ``Content-Length`` body and ``Connection: close``.
Request headers are read and ignored; anything else is a clear 4xx.
"""

from __future__ import annotations

import re
from typing import Final

import attrs

__all__ = [
    "MAX_HEAD",
    "HttpError",
    "Response",
    "encode_response",
    "head_complete",
    "parse_request_head",
    "parse_response",
]

MAX_HEAD: Final = 8192
"""Largest request head (request line and headers) accepted, in bytes."""

_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    505: "HTTP Version Not Supported",
}
_REQUEST_LINE: Final = re.compile(rb"([A-Z]+) (/[\x21-\x7e]*) HTTP/1\.([01])")
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.[01] (\d{3}) [^\r\n]*")
_HEADER: Final = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*")


class HttpError(Exception):
    """A request the server answers with ``status`` and this message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@attrs.frozen
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def head_complete(data: bytes) -> bool:
    """Whether ``data`` holds a whole request head (it ends with an empty line)."""
    return b"\r\n\r\n" in data or b"\n\n" in data


def parse_request_head(data: bytes) -> tuple[str, str]:
    """``(method, path)`` of a complete request head; :class:`HttpError` for a bad one. The
    query string, if any, is dropped."""
    if len(data) > MAX_HEAD:
        raise HttpError(431, f"request head larger than {MAX_HEAD} bytes")
    head = data.split(b"\r\n\r\n", 1)[0] if b"\r\n\r\n" in data else data.split(b"\n\n", 1)[0]
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    request_line = _REQUEST_LINE.fullmatch(lines[0])
    if request_line is None:
        if re.fullmatch(rb"[A-Z]+ /\S* HTTP/\d+(\.\d+)?", lines[0]):
            raise HttpError(505, "only HTTP/1.0 and HTTP/1.1 are spoken here")
        raise HttpError(400, "not an HTTP request line (expected: GET /status HTTP/1.1)")
    for line in lines[1:]:
        if _HEADER.fullmatch(line) is None:
            raise HttpError(400, f"malformed header line {line[:80]!r}")
    method, target, _ = request_line.groups()
    path = target.split(b"?", 1)[0].decode("ascii")
    return method.decode("ascii"), path


def encode_response(
    status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None
) -> bytes:
    """A complete HTTP/1.1 response with ``Connection: close``."""
    headers = {
        "Content-Type": content_type,
        "Content-Length": str(len(body)),
        "Cache-Control": "no-store",
        "Connection": "close",
        **(extra or {}),
    }
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def parse_response(data: bytes) -> Response:
    """A whole response as the server sends it (the client's side); ValueError if ``data``
    is not one, or is cut short of its ``Content-Length``."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError("not an HTTP response (no end of headers)")
    lines = head.split(b"\r\n")
    status_line = _STATUS_LINE.fullmatch(lines[0])
    if status_line is None:
        raise ValueError(f"not an HTTP response: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        header = _HEADER.fullmatch(line)
        if header is None:
            raise ValueError(f"malformed header line {line[:80]!r}")
        headers[header.group(1).decode("ascii").lower()] = header.group(2).decode("latin-1")
    length = headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) != len(body)):
        raise ValueError(f"body of {len(body)} bytes, Content-Length says {length}")
    return Response(int(status_line.group(1)), headers, body)
