"""The vhost-user protocol rules, message by message, without sockets."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fsd.vhost_user.backend import (
    BackendState,
    CloseFd,
    Effect,
    MapRegion,
    Reply,
    SetCallFd,
    StartQueue,
    StopQueue,
    UnmapAllRegions,
)
from fsd.vhost_user.messages import (
    HEADER,
    MEMORY_REGION,
    MEMORY_TABLE_HEAD,
    SINGLE_REGION,
    U64,
    VRING_ADDR,
    VRING_STATE,
    FrontendRequest,
    HeaderFlags,
    Message,
    ProtocolError,
    ProtocolFeatures,
    VirtioFeatures,
    decode_header,
    decode_memory_table,
)
from fsd.virtio_fs import NUM_QUEUES, virtio_fs_device

R = FrontendRequest
VA = 0x7F00_0000_0000
ACK = 1 | HeaderFlags.NEED_REPLY


def msg(request: int, payload: bytes = b"", fds: tuple[int, ...] = (), flags: int = 1) -> Message:
    return Message(request, flags, payload, fds)


def only_reply(effects: list[Effect]) -> Reply:
    [reply] = effects
    assert isinstance(reply, Reply)
    return reply


def negotiated(state: BackendState, *, reply_ack: bool = True) -> None:
    proto = ProtocolFeatures.MQ | ProtocolFeatures.CONFIGURE_MEM_SLOTS
    if reply_ack:
        proto |= ProtocolFeatures.REPLY_ACK
    assert state.handle(msg(R.SET_PROTOCOL_FEATURES, U64.pack(proto))) == []
    state.handle(msg(R.SET_OWNER))
    state.handle(msg(R.SET_FEATURES, U64.pack(state.device.features)))


def configure_vring(state: BackendState, index: int, kick_fd: int) -> list[Effect]:
    effects: list[Effect] = []
    effects += state.handle(msg(R.SET_VRING_NUM, VRING_STATE.pack(index, 128)))
    effects += state.handle(msg(R.SET_VRING_BASE, VRING_STATE.pack(index, 0)))
    base = VA + 0x1000 * (index + 1)
    addr = VRING_ADDR.pack(index, 0, base, base + 0x940, base + 0x800, 0)
    effects += state.handle(msg(R.SET_VRING_ADDR, addr))
    effects += state.handle(msg(R.SET_VRING_KICK, U64.pack(index), (kick_fd,)))
    return effects


def add_memory(state: BackendState, fd: int = 50) -> list[Effect]:
    payload = SINGLE_REGION.pack(0, 0, 1 << 30, VA, 0)
    return state.handle(msg(R.ADD_MEM_REG, payload, (fd,), ACK))


def test_features_offer_what_qemu_needs() -> None:
    state = BackendState(virtio_fs_device())
    reply = only_reply(state.handle(msg(R.GET_FEATURES)))
    features = U64.unpack(reply.payload)[0]
    for bit in (
        VirtioFeatures.VERSION_1,
        VirtioFeatures.PROTOCOL_FEATURES,
        VirtioFeatures.RING_EVENT_IDX,
        VirtioFeatures.RING_INDIRECT_DESC,
    ):
        assert features & bit
    reply = only_reply(state.handle(msg(R.GET_PROTOCOL_FEATURES)))
    proto = U64.unpack(reply.payload)[0]
    assert proto & ProtocolFeatures.REPLY_ACK
    assert not proto & ProtocolFeatures.CONFIG, "CONFIG only with --tag (QEMU 7.1-8.0 crash)"


def test_config_space_carries_the_tag() -> None:
    state = BackendState(virtio_fs_device("myfs"))
    reply = only_reply(state.handle(msg(R.GET_PROTOCOL_FEATURES)))
    assert U64.unpack(reply.payload)[0] & ProtocolFeatures.CONFIG
    reply = only_reply(state.handle(msg(R.GET_CONFIG, struct_config(0, 40))))
    assert reply.payload[12:16] == b"myfs" and reply.payload[16:48] == bytes(32)
    assert reply.payload[48:52] == (1).to_bytes(4, "little")


def struct_config(offset: int, size: int) -> bytes:
    return offset.to_bytes(4, "little") + size.to_bytes(4, "little") + bytes(4) + bytes(size)


def test_qemu_sequence_starts_both_queues_after_enable() -> None:
    state = BackendState(virtio_fs_device())
    negotiated(state)
    calls = state.handle(msg(R.SET_VRING_CALL, U64.pack(0), (10,)))
    assert calls == [SetCallFd(0, 10)]
    effects = add_memory(state)
    assert effects[0] == MapRegion(state.regions[0], 50)
    assert effects[-1] == Reply(R.ADD_MEM_REG, U64.pack(0))
    assert configure_vring(state, 0, 20) == []
    assert configure_vring(state, 1, 21) == []
    assert state.handle(msg(R.SET_VRING_ENABLE, VRING_STATE.pack(0, 1))) == [StartQueue(0)]
    assert state.handle(msg(R.SET_VRING_ENABLE, VRING_STATE.pack(1, 1))) == [StartQueue(1)]
    config = state.queue_config(1)
    assert config is not None
    assert (config.desc_gpa, config.avail_gpa, config.used_gpa) == (0x2000, 0x2800, 0x2940)
    assert config.event_idx and config.kick_fd == 21
    # A new call fd replaces the old one, which is closed.
    assert state.handle(msg(R.SET_VRING_CALL, U64.pack(0), (11,))) == [
        SetCallFd(0, 11),
        CloseFd(10),
    ]
    # Poweroff: disable, then GET_VRING_BASE stops and answers.
    assert state.handle(msg(R.SET_VRING_ENABLE, VRING_STATE.pack(0, 0))) == [StopQueue(0)]
    state.queue_stopped(0, 15)
    effects = state.handle(msg(R.GET_VRING_BASE, VRING_STATE.pack(0, 0)))
    assert effects == [StopQueue(0, reply=True), CloseFd(20)]


def test_without_protocol_features_rings_start_on_kick() -> None:
    state = BackendState(virtio_fs_device())
    state.handle(msg(R.SET_FEATURES, U64.pack(VirtioFeatures.VERSION_1)))
    table = MEMORY_TABLE_HEAD.pack(1, 0) + MEMORY_REGION.pack(0, 1 << 30, VA, 0)
    effects = state.handle(msg(R.SET_MEM_TABLE, table, (50,)))
    assert UnmapAllRegions() in effects
    assert configure_vring(state, 1, 21)[-1] == StartQueue(1)
    config = state.queue_config(1)
    assert config is not None and not config.event_idx
    with_enable = state.handle(msg(R.SET_VRING_ENABLE, VRING_STATE.pack(1, 1)))
    assert with_enable == []  # rejected: no PROTOCOL_FEATURES, and no ack was asked for


def test_need_reply_gets_an_ack_only_with_reply_ack() -> None:
    state = BackendState(virtio_fs_device())
    negotiated(state, reply_ack=False)
    assert add_memory(state) == [MapRegion(state.regions[0], 50)]
    state = BackendState(virtio_fs_device())
    negotiated(state)
    effects = state.handle(msg(R.SET_VRING_NUM, VRING_STATE.pack(0, 128), flags=ACK))
    assert effects == [Reply(R.SET_VRING_NUM, U64.pack(0))]


@pytest.mark.parametrize(
    ("request_", "payload", "fds"),
    [
        (R.SET_VRING_NUM, VRING_STATE.pack(0, 100), ()),  # not a power of two
        (R.SET_VRING_NUM, VRING_STATE.pack(NUM_QUEUES, 128), ()),  # no such queue
        (R.SET_VRING_NUM, b"\x00", ()),  # short payload
        (R.SET_FEATURES, U64.pack(1 << 60), ()),  # never offered
        (R.SET_VRING_KICK, U64.pack(0), ()),  # fd flag says an fd follows, none did
        (R.SET_VRING_KICK, U64.pack(0x100), (33,)),  # fd flag says none, one did
        (R.SET_OWNER, b"", (34,)),  # fds on a message that takes none
        (R.SET_VRING_KICK, U64.pack(0x100), ()),  # polling mode: not supported
        (R.ADD_MEM_REG, SINGLE_REGION.pack(0, 0, 0, VA, 0), (35,)),  # empty region
        (R.SET_MEM_TABLE, MEMORY_TABLE_HEAD.pack(2, 0) + bytes(64), (36,)),  # 2 regions, 1 fd
        (99, b"", ()),  # unknown request
    ],
)
def test_bad_messages_fail_the_ack_and_close_their_fds(
    request_: int, payload: bytes, fds: tuple[int, ...]
) -> None:
    state = BackendState(virtio_fs_device())
    negotiated(state)
    effects = state.handle(msg(request_, payload, fds, ACK))
    assert effects == [*(CloseFd(fd) for fd in fds), Reply(request_, U64.pack(1))]


def test_ring_outside_memory_does_not_start() -> None:
    state = BackendState(virtio_fs_device())
    negotiated(state)
    add_memory(state)
    state.handle(msg(R.SET_VRING_NUM, VRING_STATE.pack(1, 128)))
    addr = VRING_ADDR.pack(1, 0, 0x1000, 0x2000, 0x3000, 0)  # not a front-end address
    state.handle(msg(R.SET_VRING_ADDR, addr))
    state.handle(msg(R.SET_VRING_KICK, U64.pack(1), (21,)))
    assert state.handle(msg(R.SET_VRING_ENABLE, VRING_STATE.pack(1, 1))) == []


def test_rem_mem_reg_stops_queues_whose_rings_went_away() -> None:
    state = BackendState(virtio_fs_device())
    negotiated(state)
    add_memory(state)
    configure_vring(state, 1, 21)
    assert state.handle(msg(R.SET_VRING_ENABLE, VRING_STATE.pack(1, 1))) == [StartQueue(1)]
    payload = SINGLE_REGION.pack(0, 0, 1 << 30, VA, 0)
    effects = state.handle(msg(R.REM_MEM_REG, payload, (), ACK))
    assert StopQueue(1) in effects and effects[-1] == Reply(R.REM_MEM_REG, U64.pack(0))


def test_header_checks() -> None:
    assert decode_header(HEADER.pack(1, 1, 0)) == (1, 1, 0)
    for flags in (0, 2, 1 | HeaderFlags.REPLY, 1 | 0x10):
        with pytest.raises(ProtocolError):
            decode_header(HEADER.pack(1, flags, 0))
    with pytest.raises(ProtocolError):
        decode_header(HEADER.pack(1, 1, 0x1001))


@given(st.binary(max_size=600))
def test_memory_table_decoder_only_raises_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_memory_table(data)


@given(
    st.sampled_from(list(FrontendRequest)),
    st.binary(max_size=80),
    st.lists(st.integers(100, 120), max_size=3),
    st.booleans(),
)
def test_any_message_is_handled_without_raising(
    request_: int, payload: bytes, fds: list[int], ack: bool
) -> None:
    state = BackendState(virtio_fs_device("t"))
    negotiated(state)
    add_memory(state)
    effects = state.handle(msg(request_, payload, tuple(fds), ACK if ack else 1))
    closed = {e.fd for e in effects if isinstance(e, CloseFd)}
    kept = {e.fd for e in effects if isinstance(e, MapRegion)} | set(state.open_fds())
    for fd in fds:
        assert fd in closed or fd in kept, "every fd is either kept or closed"


@pytest.mark.parametrize(
    ("request_", "payload", "fds", "expected"),
    [
        (R.GET_CONFIG, struct_config(36, 8), (), struct_config(36, 0)[:12]),
        (R.GET_VRING_BASE, VRING_STATE.pack(9, 0), (), VRING_STATE.pack(9, 0)),
        (R.GET_QUEUE_NUM, b"", (34,), U64.pack(0)),
    ],
)
def test_refused_gets_still_get_their_reply(
    request_: int, payload: bytes, fds: tuple[int, ...], expected: bytes
) -> None:
    """QEMU waits for the reply to a GET_*: a refusal must not leave it waiting."""
    state = BackendState(virtio_fs_device("tag"))
    negotiated(state)
    effects = state.handle(msg(request_, payload, fds, ACK))
    assert effects == [*(CloseFd(fd) for fd in fds), Reply(request_, expected)]


def test_reset_device_forgets_ring_positions() -> None:
    state = BackendState(virtio_fs_device())
    negotiated(state)
    add_memory(state)
    configure_vring(state, 1, 21)
    assert state.handle(msg(R.SET_VRING_ENABLE, VRING_STATE.pack(1, 1))) == [StartQueue(1)]
    effects = state.handle(msg(R.RESET_DEVICE))
    assert effects == [StopQueue(1), CloseFd(21)]
    state.queue_stopped(1, 77)  # what the stopped worker reports
    assert state.vring_base(1) == 0
    assert 21 not in state.open_fds()
    # An unrelated message does not bring the old ring back.
    assert state.handle(msg(R.SET_VRING_ENABLE, VRING_STATE.pack(0, 0))) == []


def test_set_mem_table_refuses_overlapping_regions() -> None:
    state = BackendState(virtio_fs_device())
    negotiated(state)
    table = MEMORY_TABLE_HEAD.pack(2, 0) + MEMORY_REGION.pack(0, 1 << 20, VA, 0)
    table += MEMORY_REGION.pack(1 << 19, 1 << 20, VA + (1 << 21), 0)
    effects = state.handle(msg(R.SET_MEM_TABLE, table, (60, 61), ACK))
    assert effects == [CloseFd(60), CloseFd(61), Reply(R.SET_MEM_TABLE, U64.pack(1))]
