"""vhost-user wire format: request codes, feature bits, header and payload structs.

Pure: bytes in, typed values out. Numbers are native byte order on the wire; fsd only runs on
little-endian hosts, so the structs say ``<`` to keep the layout explicit. Facts from QEMU's
docs/interop/vhost-user.rst and rust-vmm's vhost crate.
"""

from __future__ import annotations

import enum
import struct
from typing import Final, NamedTuple

__all__ = [
    "FDS_ALLOWED",
    "HEADER",
    "MAX_FDS",
    "MAX_PAYLOAD",
    "FrontendRequest",
    "HeaderFlags",
    "MemoryRegion",
    "Message",
    "ProtocolError",
    "ProtocolFeatures",
    "VirtioFeatures",
    "VringAddress",
    "decode_header",
    "decode_memory_table",
    "decode_single_region",
    "decode_u64",
    "decode_vring_address",
    "decode_vring_state",
    "encode_message",
]


class ProtocolError(Exception):
    """The front-end sent a message fsd cannot accept (logged; answered with a failure)."""


class FrontendRequest(enum.IntEnum):
    """Requests a front-end (the VMM) sends to the back-end."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40


class HeaderFlags(enum.IntFlag):
    VERSION_1 = 0x1
    REPLY = 0x4
    NEED_REPLY = 0x8


class VirtioFeatures(enum.IntFlag):
    """Virtio device feature bits that matter to a vhost-user fs back-end."""

    LOG_ALL = 1 << 26
    RING_INDIRECT_DESC = 1 << 28
    RING_EVENT_IDX = 1 << 29
    PROTOCOL_FEATURES = 1 << 30  # VHOST_USER_F_PROTOCOL_FEATURES: QEMU aborts without it
    VERSION_1 = 1 << 32


class ProtocolFeatures(enum.IntFlag):
    MQ = 1 << 0
    LOG_SHMFD = 1 << 1
    REPLY_ACK = 1 << 3
    BACKEND_REQ = 1 << 5
    CONFIG = 1 << 9
    BACKEND_SEND_FD = 1 << 10
    RESET_DEVICE = 1 << 13
    CONFIGURE_MEM_SLOTS = 1 << 15


HEADER: Final = struct.Struct("<III")
U64: Final = struct.Struct("<Q")
VRING_STATE: Final = struct.Struct("<II")
VRING_ADDR: Final = struct.Struct("<IIQQQQ")
MEMORY_TABLE_HEAD: Final = struct.Struct("<II")
MEMORY_REGION: Final = struct.Struct("<QQQQ")
SINGLE_REGION: Final = struct.Struct("<QQQQQ")
CONFIG_HEAD: Final = struct.Struct("<III")

MAX_PAYLOAD: Final = 0x1000
MAX_FDS: Final = 32
MAX_MEM_REGIONS: Final = 509
VRING_INDEX_MASK: Final = 0xFF
VRING_NOFD: Final = 0x100

FDS_ALLOWED: Final = frozenset(
    {
        FrontendRequest.SET_MEM_TABLE,
        FrontendRequest.SET_LOG_BASE,
        FrontendRequest.SET_LOG_FD,
        FrontendRequest.SET_VRING_KICK,
        FrontendRequest.SET_VRING_CALL,
        FrontendRequest.SET_VRING_ERR,
        FrontendRequest.SET_BACKEND_REQ_FD,
        FrontendRequest.SET_INFLIGHT_FD,
        FrontendRequest.ADD_MEM_REG,
        FrontendRequest.REM_MEM_REG,
    }
)


class Message(NamedTuple):
    """One front-end request: its code, flags, payload and the fds that came with it."""

    request: int
    flags: int
    payload: bytes
    fds: tuple[int, ...] = ()

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & HeaderFlags.NEED_REPLY)


class MemoryRegion(NamedTuple):
    guest_phys_addr: int
    size: int
    userspace_addr: int
    mmap_offset: int


class VringAddress(NamedTuple):
    vring_index: int
    flags: int
    desc: int
    used: int
    avail: int
    log: int


def decode_header(data: bytes) -> tuple[int, int, int]:
    """Decode and check a 12-byte header; return (request, flags, payload size)."""
    request, flags, size = HEADER.unpack(data)
    if flags & 0x3 != HeaderFlags.VERSION_1:
        raise ProtocolError(f"unsupported vhost-user version in flags {flags:#x}")
    if flags & HeaderFlags.REPLY:
        raise ProtocolError("front-end sent a message with the REPLY flag")
    if flags & ~0xF:
        raise ProtocolError(f"reserved header flags set: {flags:#x}")
    if size > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {size} bytes exceeds {MAX_PAYLOAD}")
    return request, flags, size


def encode_message(request: int, payload: bytes = b"", *, reply: bool = True) -> bytes:
    """Encode a message; back-end replies carry VERSION_1|REPLY."""
    flags = HeaderFlags.VERSION_1 | (HeaderFlags.REPLY if reply else 0)
    return HEADER.pack(request, flags, len(payload)) + payload


def _exact(payload: bytes, st: struct.Struct, what: str) -> tuple[int, ...]:
    if len(payload) != st.size:
        raise ProtocolError(f"{what}: expected {st.size} payload bytes, got {len(payload)}")
    return st.unpack(payload)


def decode_u64(payload: bytes, what: str = "u64") -> int:
    value: int = _exact(payload, U64, what)[0]
    return value


def decode_vring_state(payload: bytes, what: str = "vring state") -> tuple[int, int]:
    index, num = _exact(payload, VRING_STATE, what)
    return index, num


def decode_vring_address(payload: bytes) -> VringAddress:
    return VringAddress(*_exact(payload, VRING_ADDR, "vring address"))


def decode_memory_table(payload: bytes) -> list[MemoryRegion]:
    """SET_MEM_TABLE: ``u32 nregions, u32 pad`` then 32 bytes per region (not 8 fixed slots)."""
    if len(payload) < MEMORY_TABLE_HEAD.size:
        raise ProtocolError("memory table: payload too short")
    nregions, _pad = MEMORY_TABLE_HEAD.unpack_from(payload)
    expected = MEMORY_TABLE_HEAD.size + nregions * MEMORY_REGION.size
    if nregions > MAX_MEM_REGIONS or len(payload) < expected:
        raise ProtocolError(f"memory table: {nregions} regions in {len(payload)} bytes")
    return [
        MemoryRegion(*MEMORY_REGION.unpack_from(payload, MEMORY_TABLE_HEAD.size + i * 32))
        for i in range(nregions)
    ]


def decode_single_region(payload: bytes) -> MemoryRegion:
    """ADD_MEM_REG / REM_MEM_REG: ``u64 pad`` then one region."""
    _pad, *fields = _exact(payload, SINGLE_REGION, "memory region")
    return MemoryRegion(*fields)
