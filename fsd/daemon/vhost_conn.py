"""One vhost-user session with a VMM: read messages, apply the protocol rules, carry out
their effects (map memory, start and stop queue tasks, reply)."""

from __future__ import annotations

import array
import logging
import os
import select
import socket
import stat
from collections.abc import Callable, Sequence

import trio

from fsd.daemon.guest_memory import map_region
from fsd.daemon.pool import WorkerPool
from fsd.daemon.queues import ChainHandler, FourHandler, QueueRunner
from fsd.fs import procfd
from fsd.vhost_user.backend import (
    BackendState,
    CloseFd,
    DeviceSpec,
    Effect,
    MapRegion,
    Reply,
    SetCallFd,
    StartQueue,
    StopQueue,
    UnmapAllRegions,
    UnmapRegion,
)
from fsd.vhost_user.messages import (
    HEADER,
    MAX_FDS,
    U64,
    VRING_STATE,
    FrontendRequest,
    Message,
    ProtocolError,
    decode_header,
    encode_message,
)
from fsd.virtio.memory import GuestMemory, GuestMemoryError
from fsd.virtio.splitq import SplitQueue

__all__ = ["VhostUserConnection", "serve_vhost_user_connection"]

log = logging.getLogger("fsd.vhost_user")

_ANCBUF = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)


class ConnectionClosed(Exception):
    """The front-end hung up."""


async def _recv_exactly(sock: trio.socket.SocketType, n: int) -> bytes:
    chunks = []
    while n:
        data = await sock.recv(n)
        if not data:
            raise ConnectionClosed
        chunks.append(data)
        n -= len(data)
    return b"".join(chunks)


async def receive_message(sock: trio.socket.SocketType) -> Message:
    """Read one message; fds arrive with the header bytes (SCM_RIGHTS)."""
    data, ancdata, msg_flags, _ = await sock.recvmsg(HEADER.size, _ANCBUF, socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds_array = array.array("i")
            fds_array.frombytes(payload[: len(payload) - len(payload) % fds_array.itemsize])
            fds += fds_array.tolist()
    try:
        if not data:
            raise ConnectionClosed
        if msg_flags & socket.MSG_CTRUNC:
            raise ProtocolError(f"more than {MAX_FDS} fds with one message: some were dropped")
        if len(data) < HEADER.size:
            data += await _recv_exactly(sock, HEADER.size - len(data))
        request, flags, size = decode_header(data)
        payload = await _recv_exactly(sock, size) if size else b""
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return Message(request, flags, payload, tuple(fds))


class VhostUserConnection:
    """The I/O half of a session: guest memory, queue tasks and the fds the effects hand over."""

    def __init__(
        self,
        sock: trio.socket.SocketType,
        device: DeviceSpec,
        handlers: Sequence[ChainHandler],
        nursery: trio.Nursery,
        pool: WorkerPool | None = None,
        poll_max_ns: int = 0,
        four_handler: FourHandler | None = None,
    ) -> None:
        self.sock = sock
        self.state = BackendState(device)
        self.handlers = handlers
        #: Serves every queue's four-buffer chains as its handler would (QueueRunner).
        self.four_handler = four_handler
        #: Where the queues' requests are served (--thread-pool-size); None: inline.
        self.pool = pool
        #: --poll-max-ns: how long each queue worker may spin for the next kick.
        self.poll_max_ns = poll_max_ns
        self.nursery = nursery
        self.memory = GuestMemory()
        self.runners: dict[int, QueueRunner] = {}
        #: Requests and interrupts of each queue's earlier runs (a stopped runner is dropped;
        #: a VM pause, reboot or reset stops and restarts queues), for the status view.
        self.retired: dict[int, tuple[int, int]] = {}
        self.call_fds: dict[int, int | None] = {}

    async def run(self) -> None:
        """Serve messages until the front-end disconnects."""
        try:
            while True:
                try:
                    msg = await receive_message(self.sock)
                except ProtocolError as exc:
                    # Framing is lost only if the header itself was bad; say so and hang up.
                    log.error("vhost-user: bad message from the front-end: %s", exc)
                    return
                log.debug("vhost-user <- %s", _describe(msg))
                failed = False
                for effect in self.state.handle(msg):
                    if failed and isinstance(effect, Reply) and msg.need_reply:
                        effect = Reply(effect.request, U64.pack(1))  # the ack says it failed
                    try:
                        await self.apply(effect)
                    except (OSError, ValueError) as exc:
                        # A memory fd that cannot be mapped, a kick fd that cannot be polled:
                        # the VMM's mistake. Refuse it; never let it end the daemon.
                        log.error("vhost-user %s failed: %s", _describe(msg), exc)
                        failed = True
        except (ConnectionClosed, ConnectionResetError, BrokenPipeError):
            log.info("vhost-user: front-end disconnected")
        finally:
            with trio.CancelScope(shield=True):
                await self.close()

    async def apply(self, effect: Effect) -> None:
        match effect:
            case Reply(request, payload):
                await self._send(encode_message(request, payload))
            case MapRegion(region, fd):
                try:
                    mapped = map_region(region, fd)
                    memory = self.memory.with_region(mapped)
                except (OSError, ValueError):
                    self.state.region_failed(region)
                    raise
                self.set_memory(memory)
            case UnmapRegion(region):
                self.set_memory(self.memory.without_region(region.guest_phys_addr))
            case UnmapAllRegions():
                self.set_memory(GuestMemory())
            case StartQueue(index):
                self.start_queue(index)
            case StopQueue(index, reply):
                next_avail = await self.stop_queue(index)
                if reply:
                    await self._send(
                        encode_message(
                            FrontendRequest.GET_VRING_BASE, VRING_STATE.pack(index, next_avail)
                        )
                    )
            case SetCallFd(index, fd):
                self.call_fds[index] = fd
                if index in self.runners:
                    self.runners[index].set_call_fd(fd)
            case CloseFd(fd):
                trio.lowlevel.notify_closing(fd)
                os.close(fd)

    def set_memory(self, memory: GuestMemory) -> None:
        """Swap the memory table under running queues (memory hot-plug): their rings stay
        where they were (the protocol stops a queue whose ring region goes away), and new
        descriptor buffers are looked up in the new table."""
        self.memory = memory
        for runner in self.runners.values():
            runner.queue.memory = memory

    async def _send(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[await self.sock.send(view) :]
        except OSError as exc:  # EPIPE, ECONNRESET: the front-end went away mid-reply
            raise ConnectionClosed from exc

    def start_queue(self, index: int) -> None:
        config = self.state.queue_config(index)
        if config is None:
            # Scheduled by a memory table whose region then failed to map (logged above).
            log.error("queue %d: not started: its rings are not in mapped guest memory", index)
            self.state.queue_failed(index)
            return
        try:
            queue = SplitQueue(
                self.memory,
                size=config.size,
                desc_gpa=config.desc_gpa,
                avail_gpa=config.avail_gpa,
                used_gpa=config.used_gpa,
                next_avail=config.next_avail,
                event_idx=config.event_idx,
            )
        except GuestMemoryError as exc:
            log.error("queue %d: rings are not in guest memory: %s", index, exc)
            self.state.queue_failed(index)
            return
        try:
            prepare_kick_fd(config.kick_fd)
        except (OSError, ValueError) as exc:
            log.error("queue %d: not started: unusable kick fd: %s", index, exc)
            self.state.queue_failed(index)
            return
        runner = QueueRunner(
            index,
            queue,
            config.kick_fd,
            self.call_fds.get(index),
            self.handlers[index],
            pool=self.pool,
            poll_max_ns=self.poll_max_ns,
            four_handler=self.four_handler,
        )
        self.runners[index] = runner
        self.nursery.start_soon(runner.run, name=f"fsd-queue-{index}")
        log.debug("queue %d started: %s", index, config)

    async def stop_queue(self, index: int) -> int:
        runner = self.runners.get(index)
        if runner is None:
            return self.state.vring_base(index)
        await runner.stop()  # shielded: the worker is gone before anything is closed
        del self.runners[index]
        chains, interrupts = self.retired.get(index, (0, 0))
        self.retired[index] = (chains + runner.chains, interrupts + runner.interrupts)
        next_avail = runner.queue.next_avail
        self.state.queue_stopped(index, next_avail)
        spin = runner.spin
        log.info(
            "queue %d stopped at avail index %d: %d requests, %d interrupts%s",
            index,
            next_avail,
            runner.chains,
            runner.interrupts,
            f", {spin.summary()}" if spin else "",
        )
        return next_avail

    async def close(self) -> None:
        for index in list(self.runners):
            await self.stop_queue(index)
        for fd in self.state.open_fds():
            trio.lowlevel.notify_closing(fd)
            os.close(fd)
        self.memory = GuestMemory()


def prepare_kick_fd(fd: int) -> None:
    """Check that ``fd`` is an eventfd (ValueError) and make it non-blocking.

    The queue worker waits for it in epoll and then reads its 8-byte count. Another kind of
    fd breaks that loop: a regular file cannot be polled, a pipe whose writer is gone is
    readable forever but a read returns no count, an epoll or signalfd refuses 8-byte reads.
    Non-blocking because the VMM holds the same eventfd: if it drained the count between the
    worker's epoll and its read, a blocking read would hang the worker, and with it every
    later stop of the queue."""
    if stat.S_IFMT(os.fstat(fd).st_mode) != 0:  # an anonymous inode has no file type
        raise ValueError(f"fd {fd} is not an eventfd")
    try:
        kind = procfd.readlink(fd)
    except OSError:
        kind = None  # no /proc at all: the file-type check above has to do
    if kind is not None and kind != "anon_inode:[eventfd]":
        raise ValueError(f"fd {fd} is {kind}, not an eventfd")
    os.set_blocking(fd, False)
    with select.epoll(1) as poller:
        poller.register(fd, select.EPOLLIN)


def _describe(msg: Message) -> str:
    try:
        name = FrontendRequest(msg.request).name
    except ValueError:
        name = str(msg.request)
    return f"{name} flags={msg.flags:#x} size={len(msg.payload)} fds={len(msg.fds)}"


async def serve_vhost_user_connection(
    sock: trio.socket.SocketType,
    device: DeviceSpec,
    handlers: Sequence[ChainHandler],
    *,
    four_handler: FourHandler | None = None,
    thread_pool_size: int = 0,
    poll_max_ns: int = 0,
    on_connection: Callable[[VhostUserConnection], None] | None = None,
) -> None:
    """Serve one front-end until it disconnects; queue tasks (and the request thread pool,
    if ``thread_pool_size``) live in a child nursery. ``poll_max_ns``: how long a queue
    worker may spin for the next kick. ``four_handler``: serves Linux's most common chains
    as ``handlers`` would, without views (``FuseServer.handle_four``). ``on_connection``
    gets the connection before its first message (the status view reads its state)."""
    async with trio.open_nursery() as nursery:
        pool = None
        if thread_pool_size:
            pool = WorkerPool(thread_pool_size)
            await nursery.start(pool.run)
        conn = VhostUserConnection(sock, device, handlers, nursery, pool, poll_max_ns, four_handler)
        if on_connection is not None:
            on_connection(conn)
        await conn.run()
        nursery.cancel_scope.cancel()
