"""What a front-end can send, as hypothesis strategies: the vocabulary of the sequence fuzzers.

Both the pure state-machine fuzzer (tests/vhost_user/test_backend_sequences.py) and the one
that drives a real ``fsd serve`` (tests/daemon/test_vhost_user_fuzz.py) draw messages from
here. Values come from small pools around the interesting edges (a region larger than its
memfd, rings that straddle the end of a region, an fd the message may not carry, a size that
is not a power of two) so that sequences reach deep states instead of failing at the first
length check; a share of payloads is still cut short or padded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from hypothesis import strategies as st

from fsd.vhost_user.messages import (
    CONFIG_HEAD,
    MEMORY_REGION,
    MEMORY_TABLE_HEAD,
    U64,
    VRING_ADDR,
    VRING_NOFD,
    VRING_STATE,
    FrontendRequest,
    HeaderFlags,
    ProtocolFeatures,
    VirtioFeatures,
)
from fsd.virtio_fs import FEATURES, PROTOCOL_FEATURES

R = FrontendRequest
VA: Final = 0x7F00_0000_0000
KIB: Final = 1 << 10
MIB: Final = 1 << 20
QUEUE_SIZE: Final = 128
"""Ring layout the fuzzers favour: desc at +0, avail at +0x800, used at +0x1000 of a base."""

FdKind = Literal["eventfd", "memfd", "pipe", "file", "devnull", "socket"]


@dataclass(frozen=True)
class FdSpec:
    """An fd to pass with a message; ``size`` is a memfd's length."""

    kind: FdKind
    size: int = 0


@dataclass(frozen=True)
class MessageSpec:
    request: int
    flags: int
    payload: bytes
    fds: tuple[FdSpec, ...] = ()

    def __repr__(self) -> str:  # short enough to read in a falsifying example
        try:
            name = R(self.request).name
        except ValueError:
            name = str(self.request)
        return (
            f"MessageSpec({name}, flags={self.flags:#x}, payload={self.payload!r}, fds={self.fds})"
        )


GPAS: Final = (0, MIB, 2 * MIB, 1 << 32)
REGION_SIZES: Final = (64 * KIB, MIB, 2 * MIB, 4 * MIB, 0, 1 << 40)
MEMFD_SIZES: Final = (64 * KIB, MIB, 2 * MIB)
MMAP_OFFSETS: Final = (0, 0, 0, 4096, 12, MIB)
RING_OFFSETS: Final = (0, 0x1000, 0x3000, 64 * KIB - 0x800, MIB - 0x1000, MIB + 0x1000, 3 * MIB)
VRING_INDICES: Final = (0, 1, 0, 1, 2, 255)
VRING_SIZES: Final = (QUEUE_SIZE, QUEUE_SIZE, 256, 1, 0, 100, 32768, 65536)


def _flags() -> st.SearchStrategy[int]:
    return st.sampled_from([1, 1 | HeaderFlags.NEED_REPLY])


def _sometimes() -> st.SearchStrategy[bool]:
    return st.sampled_from([False, False, False, True])


def _memfd() -> st.SearchStrategy[FdSpec]:
    return st.builds(FdSpec, st.just("memfd"), st.sampled_from(MEMFD_SIZES))


def _odd_fd() -> st.SearchStrategy[FdSpec]:
    """An fd of a kind a VMM may wrongly send anywhere."""
    kinds: list[FdKind] = ["eventfd", "pipe", "file", "devnull", "socket"]
    return st.one_of(st.builds(FdSpec, st.sampled_from(kinds)), _memfd())


def _region() -> st.SearchStrategy[bytes]:
    """One memory region: gpa, size, userspace address, mmap offset."""

    def pack(gpa: int, size: int, shifted: bool, offset: int) -> bytes:
        return MEMORY_REGION.pack(gpa, size, VA + gpa + (0x10000 if shifted else 0), offset)

    return st.builds(
        pack,
        st.sampled_from(GPAS),
        st.sampled_from(REGION_SIZES),
        _sometimes(),
        st.sampled_from(MMAP_OFFSETS),
    )


def _mangled(payload: bytes) -> st.SearchStrategy[bytes]:
    """Mostly the payload itself; sometimes cut short or padded."""
    return st.one_of(
        st.just(payload),
        st.just(payload),
        st.just(payload),
        st.integers(0, max(len(payload) - 1, 0)).map(lambda n: payload[:n]),
        st.binary(min_size=1, max_size=8).map(lambda extra: payload + extra),
    )


def _message(
    request: int, payload: st.SearchStrategy[bytes], fds: st.SearchStrategy[tuple[FdSpec, ...]]
) -> st.SearchStrategy[MessageSpec]:
    return st.builds(MessageSpec, st.just(int(request)), _flags(), payload.flatmap(_mangled), fds)


_NO_FDS: Final = st.just(())


def _rarely(fds: st.SearchStrategy[tuple[FdSpec, ...]]) -> st.SearchStrategy[tuple[FdSpec, ...]]:
    return st.one_of(_NO_FDS, _NO_FDS, _NO_FDS, fds)


def _vring_state(values: tuple[int, ...]) -> st.SearchStrategy[bytes]:
    return st.builds(VRING_STATE.pack, st.sampled_from(VRING_INDICES), st.sampled_from(values))


def _vring_addr() -> st.SearchStrategy[bytes]:
    def consistent(index: int, gpa: int, offset: int) -> bytes:
        base = VA + gpa + offset
        return VRING_ADDR.pack(index, 0, base, base + 0x1000, base + 0x800, 0)

    def scattered(index: int, d: int, u: int, a: int) -> bytes:
        return VRING_ADDR.pack(index, 0, VA + d, VA + u, VA + a, 0)

    offsets = st.sampled_from(RING_OFFSETS)
    return st.one_of(
        st.builds(consistent, st.sampled_from(VRING_INDICES), st.sampled_from(GPAS), offsets),
        st.builds(consistent, st.sampled_from(VRING_INDICES), st.sampled_from(GPAS), offsets),
        st.builds(scattered, st.sampled_from(VRING_INDICES), offsets, offsets, offsets),
    )


def _vring_fd_message(request: int) -> st.SearchStrategy[MessageSpec]:
    """SET_VRING_KICK/CALL/ERR: an index, maybe the NOFD flag, and (usually) one eventfd."""

    def build(flags: int, index: int, nofd: bool, fds: tuple[FdSpec, ...]) -> MessageSpec:
        return MessageSpec(int(request), flags, U64.pack(index | (VRING_NOFD if nofd else 0)), fds)

    eventfd = st.just((FdSpec("eventfd"),))
    fds = st.one_of(
        eventfd, eventfd, eventfd, _NO_FDS, st.tuples(_odd_fd()), st.tuples(_odd_fd(), _odd_fd())
    )
    return st.builds(build, _flags(), st.sampled_from(VRING_INDICES), _sometimes(), fds)


def _mem_table() -> st.SearchStrategy[MessageSpec]:
    def build(
        flags: int, regions: list[bytes], extra_fds: int, memfds: list[FdSpec]
    ) -> MessageSpec:
        payload = MEMORY_TABLE_HEAD.pack(len(regions), 0) + b"".join(regions)
        count = max(0, len(regions) + extra_fds)
        fds = tuple((memfds * (count // max(len(memfds), 1) + 1))[:count]) if memfds else ()
        return MessageSpec(int(R.SET_MEM_TABLE), flags, payload, fds)

    return st.builds(
        build,
        _flags(),
        st.lists(_region(), min_size=0, max_size=3),
        st.sampled_from([0, 0, 0, 0, -1, 1]),
        st.lists(_memfd(), min_size=1, max_size=3),
    )


def _single_region(request: int) -> st.SearchStrategy[MessageSpec]:
    def build(flags: int, region: bytes, fds: tuple[FdSpec, ...]) -> MessageSpec:
        return MessageSpec(int(request), flags, bytes(8) + region, fds)

    one_memfd = st.tuples(_memfd())
    fds = (
        st.one_of(one_memfd, one_memfd, one_memfd, _NO_FDS, st.tuples(_memfd(), _memfd()))
        if request == R.ADD_MEM_REG
        else st.one_of(_NO_FDS, _NO_FDS, one_memfd)
    )
    return st.builds(build, _flags(), _region(), fds)


def _u64(values: list[int]) -> st.SearchStrategy[bytes]:
    return st.sampled_from(values).map(U64.pack) | st.integers(0, 2**64 - 1).map(U64.pack)


def messages(*, with_config: bool = False) -> st.SearchStrategy[MessageSpec]:
    """Any front-end message, weighted towards ones that are well formed enough to matter."""
    no_payload = st.just(b"")
    proto = int(PROTOCOL_FEATURES | (ProtocolFeatures.CONFIG if with_config else 0))
    features = [
        int(FEATURES),
        int(FEATURES),
        int(FEATURES & ~VirtioFeatures.PROTOCOL_FEATURES),
        int(FEATURES & ~VirtioFeatures.RING_EVENT_IDX),
        0,
    ]
    protocol = [proto, proto, int(proto & ~ProtocolFeatures.REPLY_ACK), 0]
    config = st.builds(
        lambda offset, size: CONFIG_HEAD.pack(offset, size, 0) + bytes(size),
        st.sampled_from([0, 36, 40, 1 << 31]),
        st.sampled_from([0, 4, 40, 100]),
    )
    plain = [
        R.GET_FEATURES,
        R.GET_PROTOCOL_FEATURES,
        R.GET_QUEUE_NUM,
        R.GET_MAX_MEM_SLOTS,
        R.SET_OWNER,
        R.RESET_OWNER,
        R.RESET_DEVICE,
    ]
    return st.one_of(
        st.sampled_from(plain).flatmap(
            lambda r: _message(r, no_payload, _rarely(st.tuples(_odd_fd())))
        ),
        _message(R.SET_FEATURES, _u64(features), _NO_FDS),
        _message(R.SET_PROTOCOL_FEATURES, _u64(protocol), _NO_FDS),
        _mem_table(),
        _mem_table(),
        _single_region(R.ADD_MEM_REG),
        _single_region(R.REM_MEM_REG),
        _message(R.SET_VRING_NUM, _vring_state(VRING_SIZES), _NO_FDS),
        _message(R.SET_VRING_BASE, _vring_state((0, 0, 5, 0xFFFF, 1 << 20)), _NO_FDS),
        _message(R.GET_VRING_BASE, _vring_state((0,)), _NO_FDS),
        _message(R.SET_VRING_ADDR, _vring_addr(), _NO_FDS),
        _message(R.SET_VRING_ADDR, _vring_addr(), _NO_FDS),
        _message(R.SET_VRING_ENABLE, _vring_state((1, 1, 0, 2)), _NO_FDS),
        _message(R.SET_VRING_ENABLE, _vring_state((1, 1, 0, 2)), _NO_FDS),
        _vring_fd_message(R.SET_VRING_KICK),
        _vring_fd_message(R.SET_VRING_KICK),
        _vring_fd_message(R.SET_VRING_CALL),
        _vring_fd_message(R.SET_VRING_ERR),
        _message(R.SET_BACKEND_REQ_FD, no_payload, st.one_of(st.tuples(_odd_fd()), _NO_FDS)),
        _message(R.GET_CONFIG, config, _NO_FDS),
        _message(R.SET_CONFIG, config, _NO_FDS),
        st.builds(
            MessageSpec,
            st.sampled_from(
                [R.SET_LOG_BASE, R.SET_LOG_FD, R.SET_INFLIGHT_FD, R.GET_INFLIGHT_FD, 999]
            ).map(int),
            _flags(),
            st.binary(max_size=40),
            _rarely(st.tuples(_odd_fd())),
        ),
    )


ALWAYS_ANSWERED: Final = frozenset(
    {
        R.GET_FEATURES,
        R.GET_PROTOCOL_FEATURES,
        R.GET_QUEUE_NUM,
        R.GET_MAX_MEM_SLOTS,
        R.GET_VRING_BASE,
        R.GET_CONFIG,
    }
)
"""Requests a front-end always waits a reply for, whatever the ack setting."""


def qemu_start(
    add_mem_reg: bool = True,
    memfd_size: int = MIB,
    region_size: int = MIB,
    ack: bool = True,
    enable: list[int] | None = None,
) -> list[MessageSpec]:
    """QEMU 7.2's start-up sequence (memory, then rings, then enable), with the region's
    size and the memfd's drawn separately so that the region may outgrow its fd."""
    need = 1 | (HeaderFlags.NEED_REPLY if ack else 0)
    specs = [
        MessageSpec(int(R.SET_PROTOCOL_FEATURES), 1, U64.pack(int(PROTOCOL_FEATURES))),
        MessageSpec(int(R.SET_OWNER), 1, b""),
        MessageSpec(int(R.SET_FEATURES), 1, U64.pack(int(FEATURES))),
    ]
    memfd = (FdSpec("memfd", memfd_size),)
    region = MEMORY_REGION.pack(0, region_size, VA, 0)
    if add_mem_reg:
        specs.append(MessageSpec(int(R.ADD_MEM_REG), need, bytes(8) + region, memfd))
    else:
        table = MEMORY_TABLE_HEAD.pack(1, 0) + region
        specs.append(MessageSpec(int(R.SET_MEM_TABLE), need, table, memfd))
    for index in range(2):
        base = VA + 0x10000 * (index + 1)
        specs += [
            MessageSpec(int(R.SET_VRING_CALL), 1, U64.pack(index), (FdSpec("eventfd"),)),
            MessageSpec(int(R.SET_VRING_NUM), need, VRING_STATE.pack(index, QUEUE_SIZE)),
            MessageSpec(int(R.SET_VRING_BASE), need, VRING_STATE.pack(index, 0)),
            MessageSpec(
                int(R.SET_VRING_ADDR),
                need,
                VRING_ADDR.pack(index, 0, base, base + 0x1000, base + 0x800, 0),
            ),
            MessageSpec(int(R.SET_VRING_KICK), 1, U64.pack(index), (FdSpec("eventfd"),)),
        ]
    for index in [0, 1] if enable is None else enable:
        specs.append(MessageSpec(int(R.SET_VRING_ENABLE), need, VRING_STATE.pack(index, 1)))
    return specs


def qemu_starts() -> st.SearchStrategy[list[MessageSpec]]:
    """A well-formed start-up, so that the fuzzers reach running queues often; one in four
    sends a region larger than its memfd."""
    sizes = st.sampled_from((MIB, 2 * MIB))
    matching = sizes.map(lambda size: (size, size))
    mismatched = st.tuples(st.sampled_from(MEMFD_SIZES), st.sampled_from((2 * MIB, 4 * MIB)))

    def build(add: bool, sizes: tuple[int, int], ack: bool, enable: list[int]) -> list[MessageSpec]:
        return qemu_start(add, sizes[0], sizes[1], ack, enable)

    return st.builds(
        build,
        st.booleans(),
        st.one_of(matching, matching, matching, mismatched),
        st.booleans(),
        st.sampled_from([[0, 1], [0, 1], [1], []]),
    )
