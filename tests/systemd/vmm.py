"""The few FUSE requests the systemd tests send through the scripted front-end."""

from __future__ import annotations

import os
import struct

from fsd.fuse.abi import ATTR_OUT, ENTRY_OUT, IN_HEADER, OUT_HEADER, Opcode
from fsd.testing.frontend import VhostUserFrontend

__all__ = ["answer", "fuse", "init", "init_and_look_up", "serve_one_file"]

INIT_IN = struct.Struct("<IIIIII40x")


def fuse(opcode: int, unique: int, nodeid: int, body: bytes = b"") -> bytes:
    return IN_HEADER.pack(IN_HEADER.size + len(body), opcode, unique, nodeid, 0, 0, 1, 0, 0) + body


def answer(fe: VhostUserFrontend, request: bytes) -> bytes:
    data = fe.request(request)
    length, error, _ = OUT_HEADER.unpack_from(data)
    assert error == 0 and length == len(data), os.strerror(-error)
    return data[OUT_HEADER.size :]


def serve_one_file(fe: VhostUserFrontend, name: bytes) -> int:
    """What a VMM and its guest do first: start the device, INIT, LOOKUP a file; returns the
    file's size."""
    fe.start()
    return init_and_look_up(fe, name)


def init(fe: VhostUserFrontend) -> None:
    """FUSE INIT, as the guest's driver sends it first."""
    answer(fe, fuse(Opcode.INIT, 2, 0, INIT_IN.pack(7, 38, 131072, 0, 0, 0)))


def init_and_look_up(fe: VhostUserFrontend, name: bytes) -> int:
    """INIT, then LOOKUP ``name`` in the root; returns the file's size."""
    init(fe)
    entry = answer(fe, fuse(Opcode.LOOKUP, 4, 1, name + b"\0"))
    attr = entry[ENTRY_OUT.size - ATTR_OUT.size + 16 :]  # entry_out ends with fuse_attr
    return int(struct.unpack_from("<Q", attr, 8)[0])  # fuse_attr: ino, size, ...
