"""The service manager's side of sd_notify, for tests: a datagram socket that collects what a
service sends to ``$NOTIFY_SOCKET``, with the sender's pid as the kernel reports it."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import time

__all__ = ["Notification", "NotifyListener"]

_UCRED = struct.Struct("3i")


class Notification:
    """One datagram: its assignments in order, and the pid that sent it."""

    def __init__(self, pid: int, text: str) -> None:
        self.pid = pid
        self.text = text
        self.fields = dict(line.split("=", 1) for line in text.split("\n") if "=" in line)

    def __repr__(self) -> str:
        return f"Notification(pid={self.pid}, text={self.text!r})"


class NotifyListener:
    """Listens at ``address``: a path, or ``@name`` for an abstract socket (what a service
    finds in ``$NOTIFY_SOCKET``). Like systemd, it asks the kernel for each sender's
    credentials (SO_PASSCRED), so a test can tell which process spoke."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
        self.received: list[Notification] = []

    def receive(self, timeout: float = 10.0) -> Notification | None:
        """The next datagram, or None after ``timeout`` seconds."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return None
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
        pid = 0
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = _UCRED.unpack_from(payload)[0]
        note = Notification(pid, data.decode())
        self.received.append(note)
        return note

    def wait_for(self, key: str, timeout: float = 20.0) -> Notification:
        """Receive until a datagram carries ``key`` (e.g. ``"READY"``); fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            note = self.receive(left)
            if note is not None and key in note.fields:
                return note
        raise TimeoutError(f"no {key}= on {self.address} in {timeout} s: {self.received}")

    def close(self) -> None:
        self.sock.close()
        if not self.address.startswith("@"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address)
