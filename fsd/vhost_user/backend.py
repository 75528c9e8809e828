"""The vhost-user back-end protocol rules as a state machine, without I/O.

``BackendState.handle(message)`` applies one front-end message to the negotiated state and
returns the effects the I/O layer must carry out, in order: replies to send, memory regions to
map or drop, queues to start or stop, fds to close. It never touches an fd itself; every fd a
message brings is either kept in the state (and later handed out in an effect) or returned in
a :class:`CloseFd` effect, so none leaks. Rules follow QEMU's vhost-user spec
(docs/interop/vhost-user.rst) and what QEMU 7.2 really sends (the sequence
fsd.testing.frontend replays: features, protocol features, owner, memory table, then per queue
NUM, BASE, ADDR, KICK, ENABLE and CALL, with REPLY_ACK on the memory messages).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from fsd.vhost_user.messages import (
    CONFIG_HEAD,
    FDS_ALLOWED,
    MAX_MEM_REGIONS,
    U64,
    VRING_INDEX_MASK,
    VRING_NOFD,
    VRING_STATE,
    FrontendRequest,
    MemoryRegion,
    Message,
    ProtocolError,
    ProtocolFeatures,
    VirtioFeatures,
    VringAddress,
    decode_memory_table,
    decode_single_region,
    decode_u64,
    decode_vring_address,
    decode_vring_state,
)

__all__ = [
    "BackendState",
    "CloseFd",
    "DeviceSpec",
    "Effect",
    "MapRegion",
    "QueueConfig",
    "Reply",
    "SetCallFd",
    "StartQueue",
    "StopQueue",
    "UnmapAllRegions",
    "UnmapRegion",
]

log = logging.getLogger("fsd.vhost_user")

MAX_QUEUE_SIZE: Final = 32768


@dataclass(frozen=True)
class DeviceSpec:
    """What the device behind this back-end offers (the virtio-fs device fills it in)."""

    num_queues: int
    features: int
    protocol_features: int
    config_space: bytes | None = None


@dataclass(frozen=True)
class Reply:
    """Send a reply to ``request`` with this payload."""

    request: int
    payload: bytes


@dataclass(frozen=True)
class MapRegion:
    """Map ``fd`` (ownership passes to the I/O layer) as guest memory region ``region``."""

    region: MemoryRegion
    fd: int


@dataclass(frozen=True)
class UnmapRegion:
    region: MemoryRegion


@dataclass(frozen=True)
class UnmapAllRegions:
    pass


@dataclass(frozen=True)
class StartQueue:
    """Start processing queue ``index``; ask :meth:`BackendState.queue_config` for its layout."""

    index: int


@dataclass(frozen=True)
class StopQueue:
    """Stop queue ``index``, report its next avail index back with
    :meth:`BackendState.queue_stopped`, and if ``reply`` answer GET_VRING_BASE with it."""

    index: int
    reply: bool = False


@dataclass(frozen=True)
class SetCallFd:
    """Queue ``index`` now signals the driver through ``fd`` (None: no notifications)."""

    index: int
    fd: int | None


@dataclass(frozen=True)
class CloseFd:
    fd: int


Effect = (
    Reply | MapRegion | UnmapRegion | UnmapAllRegions | StartQueue | StopQueue | SetCallFd | CloseFd
)


@dataclass(frozen=True)
class QueueConfig:
    """Everything a split virtqueue needs, with ring addresses already translated to GPAs."""

    index: int
    size: int
    desc_gpa: int
    avail_gpa: int
    used_gpa: int
    next_avail: int
    event_idx: bool
    kick_fd: int


@dataclass
class _Vring:
    size: int = 0
    address: VringAddress | None = None
    base: int = 0
    kick_fd: int | None = None
    call_fd: int | None = None
    err_fd: int | None = None
    enabled: bool = False
    running: bool = False
    reset: bool = False


class BackendState:
    """Negotiated features, memory table and vring configuration of one front-end session.

    The I/O layer changes it only through :meth:`handle` and the ``queue_*``/``region_*``
    callbacks, and reads it only through the read-only accessors below."""

    def __init__(self, device: DeviceSpec) -> None:
        self.device: Final = device
        self._acked_features = 0
        self._acked_protocol_features = 0
        self._regions: list[MemoryRegion] = []
        self._backend_req_fd: int | None = None
        self._vrings = [_Vring() for _ in range(device.num_queues)]
        self._handlers: dict[int, Callable[[Message], list[Effect]]] = {
            FrontendRequest.GET_FEATURES: self._get_features,
            FrontendRequest.SET_FEATURES: self._set_features,
            FrontendRequest.GET_PROTOCOL_FEATURES: self._get_protocol_features,
            FrontendRequest.SET_PROTOCOL_FEATURES: self._set_protocol_features,
            FrontendRequest.SET_OWNER: self._set_owner,
            FrontendRequest.RESET_OWNER: self._reset_owner,
            FrontendRequest.GET_QUEUE_NUM: self._get_queue_num,
            FrontendRequest.GET_MAX_MEM_SLOTS: self._get_max_mem_slots,
            FrontendRequest.SET_MEM_TABLE: self._set_mem_table,
            FrontendRequest.ADD_MEM_REG: self._add_mem_reg,
            FrontendRequest.REM_MEM_REG: self._rem_mem_reg,
            FrontendRequest.SET_VRING_NUM: self._set_vring_num,
            FrontendRequest.SET_VRING_ADDR: self._set_vring_addr,
            FrontendRequest.SET_VRING_BASE: self._set_vring_base,
            FrontendRequest.GET_VRING_BASE: self._get_vring_base,
            FrontendRequest.SET_VRING_KICK: self._set_vring_kick,
            FrontendRequest.SET_VRING_CALL: self._set_vring_call,
            FrontendRequest.SET_VRING_ERR: self._set_vring_err,
            FrontendRequest.SET_VRING_ENABLE: self._set_vring_enable,
            FrontendRequest.SET_BACKEND_REQ_FD: self._set_backend_req_fd,
            FrontendRequest.GET_CONFIG: self._get_config,
            FrontendRequest.SET_CONFIG: self._set_config,
            FrontendRequest.RESET_DEVICE: self._reset_device,
        }

    # -- entry points ------------------------------------------------------------------

    @property
    def reply_ack(self) -> bool:
        """REPLY_ACK is in force once both PROTOCOL_FEATURES and REPLY_ACK were acked."""
        return bool(
            self._acked_protocol_features & ProtocolFeatures.REPLY_ACK
            and self.device.features & VirtioFeatures.PROTOCOL_FEATURES
        )

    def handle(self, msg: Message) -> list[Effect]:
        """Apply one message. Bad messages raise nothing: their fds are closed, the error is
        logged and, when the front-end asked for an ack, a failure status is returned."""
        fds = list(msg.fds)
        try:
            if fds and msg.request not in FDS_ALLOWED:
                raise ProtocolError(f"request {msg.request} may not carry fds")
            handler = self._handlers.get(msg.request)
            if handler is None:
                raise ProtocolError(f"unsupported request {msg.request}")
            effects = handler(msg)
            status = 0
        except ProtocolError as exc:
            name = _request_name(msg.request)
            log.error("vhost-user %s rejected: %s", name, exc)
            effects = [CloseFd(fd) for fd in fds]
            status = 1
            # A front-end waits for the reply to a GET_* whatever happens: give it one.
            failed = _failed_reply(msg)
            if failed is not None:
                effects.append(failed)
        if msg.need_reply and self.reply_ack and not _has_reply(effects, msg.request):
            effects.append(Reply(msg.request, U64.pack(status)))
        return effects

    # -- read-only accessors for the I/O layer ---------------------------------------------

    @property
    def acked_features(self) -> int:
        """The virtio feature bits the front-end acked (SET_FEATURES)."""
        return self._acked_features

    @property
    def acked_protocol_features(self) -> int:
        """The vhost-user protocol feature bits the front-end acked (SET_PROTOCOL_FEATURES)."""
        return self._acked_protocol_features

    @property
    def regions(self) -> tuple[MemoryRegion, ...]:
        """The memory table as the back-end believes it mapped."""
        return tuple(self._regions)

    def queue_running(self, index: int) -> bool:
        """Whether queue ``index`` was started (and not stopped or refused since)."""
        return self._vrings[index].running

    def vring_base(self, index: int) -> int:
        """Where queue ``index`` resumes: the avail index GET_VRING_BASE reports for a queue
        that is not running."""
        return self._vrings[index].base

    def queue_config(self, index: int) -> QueueConfig | None:
        """The layout of queue ``index`` now, ring addresses translated to guest-physical;
        None if it cannot run on the memory table as it now stands (a region that the I/O
        layer failed to map after the queue was scheduled to start)."""
        vring = self._vrings[index]
        address = vring.address
        if (
            not self._ready(vring)
            or address is None  # for the type checker: _ready() checked it
            or vring.kick_fd is None
        ):
            return None
        return QueueConfig(
            index=index,
            size=vring.size,
            desc_gpa=self._va_to_gpa(address.desc),
            avail_gpa=self._va_to_gpa(address.avail),
            used_gpa=self._va_to_gpa(address.used),
            next_avail=vring.base,
            event_idx=bool(self._acked_features & VirtioFeatures.RING_EVENT_IDX),
            kick_fd=vring.kick_fd,
        )

    # -- callbacks from the I/O layer -------------------------------------------------------

    def queue_stopped(self, index: int, next_avail: int) -> None:
        """The I/O layer stopped queue ``index``; a later restart resumes at ``next_avail``
        (unless a reset since asked for a fresh start)."""
        vring = self._vrings[index]
        if vring.reset:
            vring.reset = False
        else:
            vring.base = next_avail

    def queue_failed(self, index: int) -> None:
        """The I/O layer could not start queue ``index`` (logged there); it is not running, and
        a later configuration change may start it."""
        self._vrings[index].running = False

    def region_failed(self, region: MemoryRegion) -> None:
        """The I/O layer could not map ``region``: forget it, as if it had been refused."""
        if region in self._regions:
            self._regions.remove(region)

    def open_fds(self) -> list[int]:
        """Every fd the state still holds (closed by the I/O layer at disconnect)."""
        held = [self._backend_req_fd]
        for v in self._vrings:
            held += [v.kick_fd, v.call_fd, v.err_fd]
        return [fd for fd in held if fd is not None]

    # -- helpers -----------------------------------------------------------------------

    def _va_to_gpa(self, va: int) -> int:
        for r in self._regions:
            if r.userspace_addr <= va < r.userspace_addr + r.size:
                return r.guest_phys_addr + (va - r.userspace_addr)
        raise ProtocolError(f"ring address {va:#x} is not in any memory region")

    def _vring(self, index: int) -> _Vring:
        if not 0 <= index < len(self._vrings):
            raise ProtocolError(f"vring index {index} out of range (have {len(self._vrings)})")
        return self._vrings[index]

    def _ready(self, vring: _Vring) -> bool:
        return (
            vring.enabled
            and vring.size > 0
            and vring.address is not None
            and vring.kick_fd is not None
            and bool(self._regions)
            and self._addresses_mapped(vring.address)
        )

    def _addresses_mapped(self, address: VringAddress) -> bool:
        try:
            for va in (address.desc, address.avail, address.used):
                self._va_to_gpa(va)
        except ProtocolError:
            return False
        return True

    def _reconcile(self, restart: frozenset[int] = frozenset()) -> list[Effect]:
        """Start queues that became ready, stop those that no longer are; restart ``restart``."""
        effects: list[Effect] = []
        for index, vring in enumerate(self._vrings):
            ready = self._ready(vring)
            if vring.running and (not ready or index in restart):
                effects.append(StopQueue(index))
                vring.running = False
            if ready and not vring.running:
                effects.append(StartQueue(index))
                vring.running = True
        return effects

    def _stop_all(self) -> list[Effect]:
        effects: list[Effect] = []
        for index, vring in enumerate(self._vrings):
            if vring.running:
                effects.append(StopQueue(index))
                vring.running = False
        return effects

    # -- handlers ----------------------------------------------------------------------

    def _get_features(self, msg: Message) -> list[Effect]:
        return [Reply(msg.request, U64.pack(self.device.features))]

    def _set_features(self, msg: Message) -> list[Effect]:
        features = decode_u64(msg.payload, "SET_FEATURES")
        unknown = features & ~self.device.features
        if unknown:
            raise ProtocolError(f"front-end acked features never offered: {unknown:#x}")
        self._acked_features = features
        if not features & VirtioFeatures.PROTOCOL_FEATURES:
            # Without PROTOCOL_FEATURES there is no SET_VRING_ENABLE: rings start enabled.
            for vring in self._vrings:
                vring.enabled = True
        return self._reconcile()

    def _get_protocol_features(self, msg: Message) -> list[Effect]:
        return [Reply(msg.request, U64.pack(self.device.protocol_features))]

    def _set_protocol_features(self, msg: Message) -> list[Effect]:
        features = decode_u64(msg.payload, "SET_PROTOCOL_FEATURES")
        unknown = features & ~self.device.protocol_features
        if unknown:
            raise ProtocolError(f"front-end acked protocol features never offered: {unknown:#x}")
        self._acked_protocol_features = features
        return []

    def _set_owner(self, msg: Message) -> list[Effect]:
        return []  # one connection, one owner: nothing to record

    def _reset_owner(self, msg: Message) -> list[Effect]:
        return self._reset_rings()

    def _reset_device(self, msg: Message) -> list[Effect]:
        effects = self._reset_rings()
        self._acked_features = 0
        return effects

    def _reset_rings(self) -> list[Effect]:
        """Stop every ring and forget its kick fd and position: the front-end sets them up
        again before the rings run anew."""
        was_running = [vring.running for vring in self._vrings]
        effects = self._stop_all()
        for vring, stopped in zip(self._vrings, was_running, strict=True):
            vring.reset = stopped  # its StopQueue reports a position that no longer counts
            vring.enabled = False
            vring.base = 0
            if vring.kick_fd is not None:
                effects.append(CloseFd(vring.kick_fd))
                vring.kick_fd = None
        return effects

    def _get_queue_num(self, msg: Message) -> list[Effect]:
        return [Reply(msg.request, U64.pack(self.device.num_queues))]

    def _get_max_mem_slots(self, msg: Message) -> list[Effect]:
        return [Reply(msg.request, U64.pack(MAX_MEM_REGIONS))]

    def _set_mem_table(self, msg: Message) -> list[Effect]:
        regions = decode_memory_table(msg.payload)
        if len(regions) != len(msg.fds):
            raise ProtocolError(f"memory table has {len(regions)} regions but {len(msg.fds)} fds")
        for r in regions:
            _check_region(r)
        for i, a in enumerate(regions):
            for b in regions[i + 1 :]:
                if _overlaps(a, b):
                    raise ProtocolError(f"memory table regions {a} and {b} overlap")
        effects = self._stop_all()
        effects.append(UnmapAllRegions())
        effects += [MapRegion(r, fd) for r, fd in zip(regions, msg.fds, strict=True)]
        self._regions = list(regions)
        return effects + self._reconcile()

    def _add_mem_reg(self, msg: Message) -> list[Effect]:
        region = decode_single_region(msg.payload)
        if len(msg.fds) != 1:
            raise ProtocolError(f"ADD_MEM_REG needs exactly 1 fd, got {len(msg.fds)}")
        _check_region(region)
        if len(self._regions) >= MAX_MEM_REGIONS:
            raise ProtocolError("no free memory slot")
        for r in self._regions:
            if _overlaps(r, region):
                raise ProtocolError(f"region at gpa {region.guest_phys_addr:#x} overlaps {r}")
        self._regions.append(region)
        return [MapRegion(region, msg.fds[0]), *self._reconcile()]

    def _rem_mem_reg(self, msg: Message) -> list[Effect]:
        region = decode_single_region(msg.payload)
        effects: list[Effect] = [CloseFd(fd) for fd in msg.fds]
        for r in self._regions:
            if (r.guest_phys_addr, r.size, r.userspace_addr) == (
                region.guest_phys_addr,
                region.size,
                region.userspace_addr,
            ):
                self._regions.remove(r)
                # Queues whose rings lived there stop; the rest keep running on the new table.
                stops = self._reconcile()
                return [*effects, *stops, UnmapRegion(r)]
        raise ProtocolError(f"REM_MEM_REG for unknown region at gpa {region.guest_phys_addr:#x}")

    def _set_vring_num(self, msg: Message) -> list[Effect]:
        index, num = decode_vring_state(msg.payload)
        vring = self._vring(index)
        if num == 0 or num > MAX_QUEUE_SIZE or num & (num - 1):
            raise ProtocolError(f"vring {index}: invalid size {num}")
        if vring.running:
            raise ProtocolError(f"vring {index}: size changed while running")
        vring.size = num
        return []

    def _set_vring_addr(self, msg: Message) -> list[Effect]:
        address = decode_vring_address(msg.payload)
        vring = self._vring(address.vring_index)
        vring.address = address
        return self._reconcile(restart=frozenset({address.vring_index}))

    def _set_vring_base(self, msg: Message) -> list[Effect]:
        index, base = decode_vring_state(msg.payload)
        vring = self._vring(index)
        if vring.running:
            raise ProtocolError(f"vring {index}: base changed while running")
        vring.base = base & 0xFFFF
        return []

    def _get_vring_base(self, msg: Message) -> list[Effect]:
        index, _ = decode_vring_state(msg.payload)
        vring = self._vring(index)
        # The spec: GET_VRING_BASE stops the ring; the front-end sends a new kick to restart.
        vring.running = False
        vring.enabled = False if self._protocol_features_acked() else vring.enabled
        effects: list[Effect] = [StopQueue(index, reply=True)]
        if vring.kick_fd is not None:
            effects.append(CloseFd(vring.kick_fd))
            vring.kick_fd = None
        return effects

    def _protocol_features_acked(self) -> bool:
        return bool(self._acked_features & VirtioFeatures.PROTOCOL_FEATURES)

    def _vring_fd(self, msg: Message) -> tuple[_Vring, int, int | None]:
        value = decode_u64(msg.payload, _request_name(msg.request))
        index = value & VRING_INDEX_MASK
        nofd = bool(value & VRING_NOFD)
        if nofd == bool(msg.fds) or len(msg.fds) > 1:
            raise ProtocolError(f"vring {index}: fd count {len(msg.fds)} disagrees with flags")
        return self._vring(index), index, (msg.fds[0] if msg.fds else None)

    def _set_vring_kick(self, msg: Message) -> list[Effect]:
        vring, index, fd = self._vring_fd(msg)
        if fd is None:
            raise ProtocolError(f"vring {index}: polling mode (no kick fd) is not supported")
        effects: list[Effect] = []
        old = vring.kick_fd
        if vring.running:
            effects.append(StopQueue(index))
            vring.running = False
        if old is not None:
            effects.append(CloseFd(old))
        vring.kick_fd = fd
        if fd is not None and not self._protocol_features_acked():
            vring.enabled = True
        return effects + self._reconcile()

    def _set_vring_call(self, msg: Message) -> list[Effect]:
        vring, index, fd = self._vring_fd(msg)
        old = vring.call_fd
        vring.call_fd = fd
        effects: list[Effect] = [SetCallFd(index, fd)]
        if old is not None:
            effects.append(CloseFd(old))
        return effects

    def _set_vring_err(self, msg: Message) -> list[Effect]:
        vring, _, fd = self._vring_fd(msg)
        old = vring.err_fd
        vring.err_fd = fd
        return [CloseFd(old)] if old is not None else []

    def _set_vring_enable(self, msg: Message) -> list[Effect]:
        index, enable = decode_vring_state(msg.payload)
        if not self._protocol_features_acked():
            raise ProtocolError("SET_VRING_ENABLE without PROTOCOL_FEATURES")
        if enable not in (0, 1):
            raise ProtocolError(f"vring {index}: enable must be 0 or 1, got {enable}")
        self._vring(index).enabled = bool(enable)
        return self._reconcile()

    def _set_backend_req_fd(self, msg: Message) -> list[Effect]:
        if len(msg.fds) != 1:
            raise ProtocolError(f"SET_BACKEND_REQ_FD needs 1 fd, got {len(msg.fds)}")
        effects: list[Effect] = []
        if self._backend_req_fd is not None:
            effects.append(CloseFd(self._backend_req_fd))
        self._backend_req_fd = msg.fds[0]
        return effects

    def _get_config(self, msg: Message) -> list[Effect]:
        space = self.device.config_space
        if space is None:
            raise ProtocolError("GET_CONFIG: this device has no config space (no --tag)")
        if len(msg.payload) < CONFIG_HEAD.size:
            raise ProtocolError("GET_CONFIG: payload too short")
        offset, size, flags = CONFIG_HEAD.unpack_from(msg.payload)
        if offset + size > len(space) or len(msg.payload) != CONFIG_HEAD.size + size:
            raise ProtocolError(f"GET_CONFIG: {size} bytes at {offset} outside config space")
        return [
            Reply(
                msg.request, CONFIG_HEAD.pack(offset, size, flags) + space[offset : offset + size]
            )
        ]

    def _set_config(self, msg: Message) -> list[Effect]:
        raise ProtocolError("SET_CONFIG: the virtio-fs config space is read-only")


_U64_REPLIES: Final = frozenset(
    {
        FrontendRequest.GET_FEATURES,
        FrontendRequest.GET_PROTOCOL_FEATURES,
        FrontendRequest.GET_QUEUE_NUM,
        FrontendRequest.GET_MAX_MEM_SLOTS,
    }
)


def _failed_reply(msg: Message) -> Reply | None:
    """The reply a refused GET_* still gets: GET_CONFIG with no bytes (the spec's error form),
    GET_VRING_BASE with index 0, a u64 0 for the rest; None for messages without a reply."""
    if msg.request == FrontendRequest.GET_CONFIG:
        head = msg.payload[: CONFIG_HEAD.size].ljust(CONFIG_HEAD.size, b"\0")
        offset, _size, flags = CONFIG_HEAD.unpack(head)
        return Reply(msg.request, CONFIG_HEAD.pack(offset, 0, flags))
    if msg.request == FrontendRequest.GET_VRING_BASE:
        index = int.from_bytes(msg.payload[:4].ljust(4, b"\0"), "little")
        return Reply(msg.request, VRING_STATE.pack(index, 0))
    if msg.request in _U64_REPLIES:
        return Reply(msg.request, U64.pack(0))
    return None


def _check_region(region: MemoryRegion) -> None:
    if region.size == 0 or region.guest_phys_addr + region.size > 1 << 64:
        raise ProtocolError(f"invalid memory region {region}")


def _overlaps(a: MemoryRegion, b: MemoryRegion) -> bool:
    return (
        a.guest_phys_addr < b.guest_phys_addr + b.size
        and b.guest_phys_addr < a.guest_phys_addr + a.size
    )


def _has_reply(effects: list[Effect], request: int) -> bool:
    return any(isinstance(e, Reply) and e.request == request for e in effects) or any(
        isinstance(e, StopQueue) and e.reply for e in effects
    )


def _request_name(request: int) -> str:
    try:
        return FrontendRequest(request).name
    except ValueError:
        return f"request {request}"
