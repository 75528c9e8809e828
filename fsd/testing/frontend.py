"""A scripted vhost-user front-end: what QEMU does, in Python, for tests.

It owns memfd guest memory and eventfds, speaks vhost-user over a real Unix socket in the
order QEMU 7.2 does (as traced from a real QEMU 7.2 against virtiofsd), and drives the queues with
:class:`~fsd.testing.driver.DriverQueue`. Synchronous on purpose: tests run the daemon in
another thread or process and talk to it like a VMM would.
"""

from __future__ import annotations

import array
import mmap
import os
import select
import socket
from typing import Final

from fsd.testing.driver import DriverQueue, GuestAllocator
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
    ProtocolFeatures,
    VirtioFeatures,
)

__all__ = ["VhostUserFrontend"]

R = FrontendRequest
VA_BASE: Final = 0x7F00_0000_0000
"""The front-end's 'virtual address' of guest memory: any number works, the back-end only
uses it to translate ring addresses."""


class VhostUserFrontend:
    """A VMM stand-in: guest memory, two virtqueues and a vhost-user connection."""

    def __init__(
        self,
        socket_path: str | None,
        *,
        memory_size: int = 64 << 20,
        sock: socket.socket | None = None,
    ) -> None:
        """Connect to ``socket_path``, or talk over ``sock`` (a connected socket, e.g. one
        end of a socketpair whose other end the back-end inherited)."""
        if sock is None:
            assert socket_path is not None
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(30)
            sock.connect(socket_path)
        sock.settimeout(30)
        self.sock = sock
        self.memory_size = memory_size
        self.memfd = os.memfd_create("fsd-test-guest", os.MFD_CLOEXEC)
        os.ftruncate(self.memfd, memory_size)
        self.mapping = mmap.mmap(self.memfd, memory_size)
        self.memory = memoryview(self.mapping)
        self.rings = GuestAllocator(0, 1 << 20)
        self.queues: list[DriverQueue] = []
        self.kicks: list[int] = []
        self.calls: list[int] = []
        self.features = 0
        self.extra_regions: list[tuple[int, mmap.mmap]] = []

    # -- raw messages -----------------------------------------------------------------

    def send(
        self, request: int, payload: bytes = b"", fds: list[int] | None = None, *, flags: int = 1
    ) -> None:
        data = HEADER.pack(request, flags, len(payload)) + payload
        if fds:
            self.sock.sendmsg(
                [data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
            )
        else:
            self.sock.sendall(data)

    def receive_reply(self, request: int) -> bytes:
        header = self._recv_exactly(HEADER.size)
        code, flags, size = HEADER.unpack(header)
        if code != request or not flags & HeaderFlags.REPLY:
            raise AssertionError(f"expected a reply to {request}, got {code} flags {flags:#x}")
        return self._recv_exactly(size)

    def _recv_exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("back-end closed the connection")
            data += chunk
        return data

    def call(self, request: int, payload: bytes = b"") -> bytes:
        self.send(request, payload)
        return self.receive_reply(request)

    def get_u64(self, request: int) -> int:
        value: int = U64.unpack(self.call(request))[0]
        return value

    def set_u64(self, request: int, value: int, *, ack: bool = False) -> int | None:
        flags = 1 | (HeaderFlags.NEED_REPLY if ack else 0)
        self.send(request, U64.pack(value), flags=flags)
        return U64.unpack(self.receive_reply(request))[0] if ack else None

    # -- the QEMU sequence ------------------------------------------------------------

    def start(
        self,
        *,
        queue_size: int = 128,
        features: int | None = None,
        add_mem_reg: bool = True,
        num_queues: int = 2,
    ) -> None:
        """Negotiate, share memory and start the queues, as QEMU 7.2 does at DRIVER_OK."""
        offered = self.get_u64(R.GET_FEATURES)
        assert offered & VirtioFeatures.PROTOCOL_FEATURES, "QEMU aborts without this bit"
        proto = self.get_u64(R.GET_PROTOCOL_FEATURES)
        wanted = ProtocolFeatures.MQ | ProtocolFeatures.REPLY_ACK
        if add_mem_reg:
            wanted |= ProtocolFeatures.CONFIGURE_MEM_SLOTS
        self.set_u64(R.SET_PROTOCOL_FEATURES, proto & wanted)
        assert self.get_u64(R.GET_QUEUE_NUM) >= num_queues
        if add_mem_reg:
            assert self.get_u64(R.GET_MAX_MEM_SLOTS) > 0
        self.send(R.SET_OWNER)
        self.features = offered if features is None else features
        for index in range(num_queues):
            call = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self.calls.append(call)
            self.set_vring_fd(R.SET_VRING_CALL, index, call)
        self.set_u64(R.SET_FEATURES, self.features)
        region = (0, self.memory_size, VA_BASE, 0)
        if add_mem_reg:
            payload = SINGLE_REGION.pack(0, *region)
            self.send(R.ADD_MEM_REG, payload, [self.memfd], flags=1 | HeaderFlags.NEED_REPLY)
            assert U64.unpack(self.receive_reply(R.ADD_MEM_REG))[0] == 0
        else:
            payload = MEMORY_TABLE_HEAD.pack(1, 0) + MEMORY_REGION.pack(*region)
            self.send(R.SET_MEM_TABLE, payload, [self.memfd])
        share = (self.memory_size - (1 << 20)) // num_queues
        for index in range(num_queues):
            start = (1 << 20) + index * share
            buffers = GuestAllocator(start, start + share)
            queue = DriverQueue(self.memory, self.rings, buffers, queue_size)
            self.queues.append(queue)
            self.send(R.SET_VRING_NUM, VRING_STATE.pack(index, queue_size))
            self.send(R.SET_VRING_BASE, VRING_STATE.pack(index, 0))
            self.send(
                R.SET_VRING_ADDR,
                VRING_ADDR.pack(
                    index,
                    0,
                    VA_BASE + queue.desc_gpa,
                    VA_BASE + queue.used_gpa,
                    VA_BASE + queue.avail_gpa,
                    0,
                ),
            )
            kick = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self.kicks.append(kick)
            self.set_vring_fd(R.SET_VRING_KICK, index, kick)
        if self.features & VirtioFeatures.PROTOCOL_FEATURES:
            for index in range(num_queues):
                self.send(R.SET_VRING_ENABLE, VRING_STATE.pack(index, 1))

    def hotplug_region(self, gpa: int, size: int) -> memoryview:
        """Add a second memory region while the queues run (ADD_MEM_REG), as memory hot-plug
        does; returns a view of it. The region is released by :meth:`close`."""
        fd = os.memfd_create("fsd-test-hotplug", os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        mapping = mmap.mmap(fd, size)
        self.extra_regions.append((fd, mapping))
        payload = SINGLE_REGION.pack(0, gpa, size, VA_BASE + gpa, 0)
        self.send(R.ADD_MEM_REG, payload, [fd], flags=1 | HeaderFlags.NEED_REPLY)
        assert U64.unpack(self.receive_reply(R.ADD_MEM_REG))[0] == 0
        return memoryview(mapping)

    def set_vring_fd(self, request: int, index: int, fd: int | None) -> None:
        if fd is None:
            self.send(request, U64.pack(index | 0x100))
        else:
            self.send(request, U64.pack(index), [fd])

    def stop(self) -> list[int]:
        """Disable the rings and fetch their bases, as QEMU does at poweroff."""
        for index in range(len(self.queues)):
            self.send(R.SET_VRING_ENABLE, VRING_STATE.pack(index, 0))
        bases = []
        for index in range(len(self.queues)):
            reply = self.call(R.GET_VRING_BASE, VRING_STATE.pack(index, 0))
            bases.append(VRING_STATE.unpack(reply)[1])
        return bases

    def close(self) -> None:
        self.sock.close()
        for fd in self.kicks + self.calls:
            os.close(fd)
        self.kicks.clear()
        self.calls.clear()
        self.queues.clear()
        self.memory.release()
        self.mapping.close()
        os.close(self.memfd)
        for fd, mapping in self.extra_regions:
            mapping.close()
            os.close(fd)
        self.extra_regions.clear()

    # -- requests ---------------------------------------------------------------------

    def kick(self, index: int) -> None:
        os.eventfd_write(self.kicks[index], 1)

    def wait_call(self, index: int, timeout: float = 10.0) -> bool:
        """Wait until the back-end signals queue ``index``; False on timeout."""
        fd = self.calls[index]
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return False
        try:
            os.eventfd_read(fd)
        except BlockingIOError:
            return False
        return True

    def wait_used(self, index: int, count: int = 1, timeout: float = 10.0) -> list[tuple[int, int]]:
        """Collect ``count`` used entries from queue ``index``."""
        queue = self.queues[index]
        used: list[tuple[int, int]] = []
        while True:
            used += queue.take_used()
            if len(used) >= count:
                return used
            if queue.used_idx != queue.last_used:
                # Pushed before take_used() asked for an interrupt at the next entry: the
                # device saw the old used_event and did not signal (Linux re-checks too).
                continue
            if not self.wait_call(index, timeout):
                used += queue.take_used()
                if len(used) >= count:
                    return used
                raise TimeoutError(f"queue {index}: {len(used)} of {count} replies arrived")

    def request(
        self,
        request: bytes | list[bytes],
        reply_size: int = 4096,
        *,
        queue: int = 1,
        indirect: bool = True,
    ) -> bytes:
        """Send one request and return the reply bytes the back-end wrote."""
        q = self.queues[queue]
        head = q.add_request(request, reply_size, indirect=indirect)
        self.kick(queue)
        [(used_head, length)] = self.wait_used(queue)
        assert used_head == head, (used_head, head)
        reply = q.written(head, length)
        return reply
