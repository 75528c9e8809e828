"""Ask a daemon's status socket (``fsd status``): one GET, blocking, with a deadline."""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from typing import Any, Final

from fsd.status.http import parse_response

__all__ = ["MAX_RESPONSE", "StatusError", "fetch", "fetch_document"]

#: Largest answer read, in bytes (a status document is a few KiB; 64k allowlist paths fit).
MAX_RESPONSE: Final = 16 << 20


class StatusError(Exception):
    """The status socket cannot be reached or answered something unusable; says which."""


def fetch(socket_path: str | os.PathLike[str], path: str = "/status", timeout: float = 10) -> bytes:
    """The body of ``GET path`` on the daemon's status socket; :class:`StatusError` else."""
    where = os.fspath(socket_path)
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(where)
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: fsd\r\n\r\n".encode("ascii"))
            chunks, size = [], 0
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_RESPONSE:
                    raise StatusError(f"{where}: answer larger than {MAX_RESPONSE} bytes")
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
        except FileNotFoundError:
            raise StatusError(
                f"{where}: no such socket; is fsd running with --status-socket {where}?"
            ) from None
        except ConnectionRefusedError:
            raise StatusError(f"{where}: nobody listens there (fsd has exited?)") from None
        except PermissionError:
            raise StatusError(
                f"{where}: permission denied; the status socket is the daemon user's only "
                "(mode 0600): run fsd status as that user"
            ) from None
        except TimeoutError:
            raise StatusError(f"{where}: no answer within {timeout:g} s") from None
        except OSError as exc:
            if exc.errno == errno.EPROTOTYPE:
                raise StatusError(
                    f"{where}: not a status socket (a datagram or seqpacket socket: the "
                    "allowlist control socket?)"
                ) from None
            raise StatusError(f"{where}: {exc.strerror or exc}") from None
    try:
        response = parse_response(b"".join(chunks))
    except ValueError as exc:
        raise StatusError(f"{where}: not a status socket: {exc}") from None
    if response.status != 200:
        message = response.body.decode("utf-8", "replace").strip()
        raise StatusError(f"{where}: {path}: {response.status} {message}")
    return response.body


def fetch_document(socket_path: str | os.PathLike[str], timeout: float = 10) -> dict[str, Any]:
    """The status document (``/status``), parsed."""
    body = fetch(socket_path, "/status", timeout)
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise StatusError(f"{os.fspath(socket_path)}: the status is not JSON: {exc}") from None
    if not isinstance(doc, dict) or "schema" not in doc:
        raise StatusError(f"{os.fspath(socket_path)}: not an fsd status document")
    return doc
