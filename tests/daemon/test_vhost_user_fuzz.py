"""A real ``fsd serve`` under any sequence of vhost-user messages a VMM could send.

Hypothesis stateful testing over a real Unix socket with real fds: memfd guest memory (some
smaller than the region they are sent for), eventfds, and fds of the wrong kind (a pipe, a
regular file, /dev/null, a socket). Between messages the machine kicks the queues and
scribbles over the rings, as a VMM that also owns guest memory could. A mirror
:class:`BackendState` says which messages the daemon must answer.

What must hold: every message the front-end waits on is answered; the daemon stays up until
the front-end hangs up (or sends a header it cannot frame, after which it hangs up itself);
then it exits with status 0, and nothing it wrote to stderr is a traceback.

CI runs a few examples; ``FSD_FUZZ_EXAMPLES=500`` runs more.
"""

from __future__ import annotations

import array
import itertools
import mmap
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from fsd.fuse.abi import IN_HEADER, Opcode
from fsd.testing.frontend import VA_BASE
from fsd.unix_sockets import is_listening
from fsd.vhost_user.backend import BackendState, Reply, StopQueue
from fsd.vhost_user.messages import (
    HEADER,
    MAX_FDS,
    MAX_PAYLOAD,
    MEMORY_REGION,
    MEMORY_TABLE_HEAD,
    U64,
    VRING_ADDR,
    VRING_STATE,
    FrontendRequest,
    HeaderFlags,
    Message,
)
from fsd.virtio_fs import NUM_QUEUES, virtio_fs_device
from tests.vhost_user.sequences import (
    QUEUE_SIZE,
    RING_OFFSETS,
    VA,
    FdKind,
    FdSpec,
    MessageSpec,
    messages,
    qemu_start,
    qemu_starts,
)

R = FrontendRequest
DESC = struct.Struct("<QIHH")
REPLY_TIMEOUT = 15.0
INIT_IN = struct.Struct("<IIIIII40x")
EXAMPLES = int(os.environ.get("FSD_FUZZ_EXAMPLES", "12"))
assert VA == VA_BASE


def fuse_requests() -> st.SearchStrategy[bytes]:
    """An INIT, a GETATTR or a LOOKUP of the root, well formed or cut short; or junk."""

    def request(opcode: int, body: bytes, cut: int) -> bytes:
        data = IN_HEADER.pack(IN_HEADER.size + len(body), opcode, 7, 1, 0, 0, 1, 0, 0) + body
        return data[: len(data) - cut] if cut < len(data) else data

    init = INIT_IN.pack(7, 38, 131072, 0x7BFFFFFB, 0, 0)
    return st.one_of(
        st.builds(
            request,
            st.sampled_from([Opcode.INIT, Opcode.GETATTR, Opcode.LOOKUP]),
            st.sampled_from([init, bytes(16), b".\0"]),
            st.sampled_from([0, 0, 0, 1, 30]),
        ),
        st.binary(min_size=1, max_size=80),
    )


class DaemonProcess:
    """``python -m fsd serve`` with stderr in a file (a pipe could fill up and stall it)."""

    def __init__(self, root: Path) -> None:
        shared = root / "shared"
        shared.mkdir()
        self.socket_path = root / "vhost.sock"
        self.log: IO[str] = open(root / "stderr", "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fsd", "serve", "--socket-path", str(self.socket_path),
             "--shared-dir", str(shared), "--log-level", "info"],
            stderr=self.log,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while not (self.socket_path.exists() and is_listening(self.socket_path)):
            assert self.proc.poll() is None, f"fsd serve did not start: {self.stderr()}"
            assert time.monotonic() < deadline, "fsd serve did not start in 20 s"
            time.sleep(0.02)

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def wait(self) -> int:
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"fsd serve did not exit: {self.stderr()[-3000:]}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class FdFactory:
    """Real fds for :class:`FdSpec`; keeps eventfds (to kick) and memfd mappings (to scribble)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.eventfds: list[int] = []
        self.memory: list[mmap.mmap] = []
        self.names = itertools.count()

    def make(self, spec: FdSpec) -> tuple[int, bool]:
        """A new fd and whether the caller closes it once sent (False: kept here)."""
        match spec.kind:
            case "eventfd":
                fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
                self.eventfds.append(fd)
                return fd, False
            case "memfd":
                fd = os.memfd_create("fsd-fuzz-guest", os.MFD_CLOEXEC)
                os.ftruncate(fd, spec.size)
                self.memory.append(mmap.mmap(fd, spec.size))
                return fd, True
            case "pipe":
                r, w = os.pipe()
                os.close(w)
                return r, True
            case "file":
                return os.open(
                    self.root / f"plain-{next(self.names)}", os.O_RDWR | os.O_CREAT
                ), True
            case "devnull":
                return os.open(os.devnull, os.O_RDWR), True
            case "socket":
                a, b = socket.socketpair()
                b.close()
                return a.detach(), True

    def close(self) -> None:
        for fd in self.eventfds:
            os.close(fd)
        for mapping in self.memory:
            mapping.close()


class DaemonSequences(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory(prefix="fsd-fuzz-")
        root = Path(self.tmp.name)
        self.daemon = DaemonProcess(root)
        self.fds = FdFactory(root)
        self.mirror = BackendState(virtio_fs_device())
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(REPLY_TIMEOUT)
        self.sock.connect(str(self.daemon.socket_path))
        self.hung_up = False  # the daemon hung up after a header it could not frame
        self.start_memory: mmap.mmap | None = None

    # -- rules ------------------------------------------------------------------------

    @initialize(specs=st.one_of(st.just([]), qemu_starts(), qemu_starts()))
    def begin(self, specs: list[MessageSpec]) -> None:
        """Most runs start where QEMU would, so that rules act on running queues."""
        self.start_like_qemu(specs)

    @precondition(lambda self: not self.hung_up)
    @rule(specs=qemu_starts())
    def start_like_qemu(self, specs: list[MessageSpec]) -> None:
        for spec in specs:
            self.send(spec)
        if specs:
            self.start_memory = self.fds.memory[-1]  # the one memfd a start sends

    @rule(queue=st.sampled_from([0, 1]), request=fuse_requests())
    def request(self, queue: int, request: bytes) -> None:
        """Publish one request in a ring where the last start put it (as a guest would)."""
        memory = self.start_memory
        if memory is None or len(memory) < 0x50000:
            return
        desc, avail = 0x10000 * (queue + 1), 0x10000 * (queue + 1) + 0x800
        index = struct.unpack_from("<H", memory, avail + 2)[0]
        head = (2 * index) % QUEUE_SIZE
        buffer = 0x30000 + 0x2000 * queue
        memory[buffer : buffer + len(request)] = request
        DESC.pack_into(memory, desc + 16 * head, buffer, len(request), 1, head + 1)
        DESC.pack_into(memory, desc + 16 * (head + 1), buffer + 0x1000, 0x1000, 2, 0)
        struct.pack_into("<H", memory, avail + 4 + 2 * (index % QUEUE_SIZE), head)
        struct.pack_into("<H", memory, avail + 2, (index + 1) & 0xFFFF)
        self.kick()

    @precondition(lambda self: not self.hung_up)
    @rule(spec=messages())
    def send(self, spec: MessageSpec) -> None:
        fds = []
        try:
            for fd_spec in spec.fds:
                fd, close = self.fds.make(fd_spec)
                fds.append((fd, close))
            data = HEADER.pack(spec.request, spec.flags, len(spec.payload)) + spec.payload
            ancillary = (
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd for fd, _ in fds]))]
                if fds
                else []
            )
            self.sock.sendmsg([data], ancillary)
        finally:
            for fd, close in fds:
                if close:
                    os.close(fd)
        mirrored = Message(
            spec.request, spec.flags, spec.payload, tuple(range(1000, 1000 + len(fds)))
        )
        # Whether a message is answered depends on the negotiation only, never on what the
        # I/O layer managed to do: a mirror that maps nothing predicts it.
        effects = self.mirror.handle(mirrored)
        replies = [
            e for e in effects if isinstance(e, Reply) or (isinstance(e, StopQueue) and e.reply)
        ]
        for _ in replies:
            self.receive_reply(spec.request)

    @precondition(lambda self: not self.hung_up)
    @rule()
    def ping(self) -> None:
        """The daemon still answers (GET_QUEUE_NUM is always answered)."""
        self.sock.sendall(HEADER.pack(R.GET_QUEUE_NUM, 1, 0))
        assert U64.unpack(self.receive_reply(R.GET_QUEUE_NUM)) == (NUM_QUEUES,)

    @rule()
    def kick(self) -> None:
        for fd in self.fds.eventfds:
            os.eventfd_write(fd, 1)

    @rule(
        which=st.integers(0, 7),
        offset=st.sampled_from(RING_OFFSETS) | st.integers(0, 0x20000),
        junk=st.binary(min_size=1, max_size=64),
    )
    def scribble(self, which: int, offset: int, junk: bytes) -> None:
        """Write over guest memory where rings and buffers may lie, then kick."""
        if not self.fds.memory:
            return
        mapping = self.fds.memory[which % len(self.fds.memory)]
        base = 0x10000 + offset  # qemu_starts() puts rings at 0x10000 and 0x20000
        end = min(base + len(junk), len(mapping))
        if base < end:
            mapping[base:end] = junk[: end - base]
        self.kick()

    @precondition(lambda self: not self.hung_up)
    @rule(
        how=st.sampled_from(["version 0", "version 2", "reply flag", "reserved flag", "too big",
                             "too many fds"]),
        go=st.integers(0, 7),
    )  # fmt: skip
    def unframeable(self, how: str, go: int) -> None:
        """A message the daemon cannot frame: it says so and hangs up. (Only one draw in
        eight goes ahead: the run has little left to do after.)"""
        if go:
            return
        flags, size, fds = 1, 0, 0
        match how:
            case "version 0":
                flags = 0
            case "version 2":
                flags = 2
            case "reply flag":
                flags = 1 | HeaderFlags.REPLY
            case "reserved flag":
                flags = 1 | 0x100
            case "too big":
                size = MAX_PAYLOAD + 1
            case "too many fds":
                fds = MAX_FDS + 8
        events = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(fds)]
        try:
            ancillary = (
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", events))] if events else []
            )
            self.sock.sendmsg([HEADER.pack(R.GET_FEATURES, flags, size)], ancillary)
        finally:
            for fd in events:
                os.close(fd)
        assert self.sock.recv(1) == b"", "the daemon should hang up"
        self.hung_up = True

    def receive_reply(self, request: int) -> bytes:
        header = self._recv_exactly(HEADER.size)
        code, flags, size = HEADER.unpack(header)
        assert code == request and flags & HeaderFlags.REPLY, (code, flags, request)
        return self._recv_exactly(size)

    def _recv_exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            try:
                chunk = self.sock.recv(n - len(data))
            except TimeoutError:
                raise AssertionError(f"no reply in {REPLY_TIMEOUT} s: {self.tail()}") from None
            assert chunk, f"the daemon hung up: {self.tail()}"
            data += chunk
        return data

    def tail(self) -> str:
        return self.daemon.stderr()[-4000:]

    def teardown(self) -> None:
        try:
            self.sock.close()
            status = self.daemon.wait()
            err = self.daemon.stderr()
            for line in err.splitlines() if currently_in_test_context() else []:
                # What the run reached, for --hypothesis-show-statistics.
                if " ERROR " in line or "stopped at" in line:
                    event(line.split(": ", 1)[1][:60])
            assert "Traceback" not in err, err[-6000:]
            assert status == 0, err[-3000:]
        finally:
            self.daemon.close()
            self.fds.close()
            self.tmp.cleanup()


TestDaemonSequences = DaemonSequences.TestCase
TestDaemonSequences.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_region_larger_than_its_memfd_is_refused_not_fatal() -> None:
    """Issue 11 item 4: rings configured, then a SET_MEM_TABLE whose region is larger than
    its memfd (the mmap fails) with the ring addresses in the part that is missing. It used to
    end the daemon with a traceback from queue_config."""
    machine = DaemonSequences()
    try:
        machine.send(MessageSpec(R.SET_PROTOCOL_FEATURES, 1, U64.pack(1 << 3)))  # REPLY_ACK
        machine.send(MessageSpec(R.SET_FEATURES, 1, U64.pack((1 << 30) | (1 << 32))))
        base = VA + (2 << 20)
        for message in [
            MessageSpec(R.SET_VRING_NUM, 9, VRING_STATE.pack(1, QUEUE_SIZE)),
            MessageSpec(
                R.SET_VRING_ADDR, 9, VRING_ADDR.pack(1, 0, base, base + 0x1000, base + 0x800, 0)
            ),
            MessageSpec(R.SET_VRING_KICK, 1, U64.pack(1), (FdSpec("eventfd"),)),
            MessageSpec(R.SET_VRING_ENABLE, 9, VRING_STATE.pack(1, 1)),
        ]:
            machine.send(message)
        table = MEMORY_TABLE_HEAD.pack(1, 0) + MEMORY_REGION.pack(0, 4 << 20, VA, 0)
        machine.send(MessageSpec(R.SET_MEM_TABLE, 1, table, (FdSpec("memfd", 1 << 20),)))
        machine.ping()
        log = machine.tail()
        assert "needs 4194304 bytes of its fd, which has 1048576" in log
        assert "not started: its rings are not in mapped guest memory" in log
    finally:
        machine.teardown()


@pytest.mark.parametrize("kind", ["pipe", "socket"])
def test_kick_fd_that_is_not_an_eventfd_is_refused(kind: FdKind) -> None:
    """Found by the fuzzer: a pipe (or socket) whose other end is closed, sent as a kick fd,
    is readable forever but yields no 8-byte count; the queue worker died on it with a
    traceback. Such a queue is now not started, with one log line."""
    machine = DaemonSequences()
    try:
        machine.begin(qemu_start(enable=[0, 1]))
        machine.send(MessageSpec(R.SET_VRING_KICK, 1, U64.pack(0), (FdSpec(kind),)))
        machine.kick()
        machine.ping()
        assert "queue 0: not started: unusable kick fd" in machine.tail()
    finally:
        machine.teardown()


def test_kick_eventfd_is_made_non_blocking() -> None:
    """The worker reads the kick count after epoll says it is there; the VMM holds the same
    eventfd and could drain it in between: a blocking read would then hang the worker."""
    machine = DaemonSequences()
    blocking = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        machine.begin(qemu_start(enable=[0, 1]))
        machine.sock.sendmsg(
            [HEADER.pack(R.SET_VRING_KICK, 1, 8) + U64.pack(1)],
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [blocking]))],
        )
        machine.ping()
        assert not os.get_blocking(blocking)  # one file description, shared with the daemon
    finally:
        os.close(blocking)
        machine.teardown()
