"""``fsd serve`` driven over a real socket by the scripted front-end: memfd guest memory,
eventfds, descriptor chains. Every vhost-user and virtqueue path a VMM or guest can take,
bad ones included, without booting a guest."""

from __future__ import annotations

import errno
import os
import signal
import stat
import struct
from pathlib import Path

import pytest

from fsd.fuse.abi import (
    ATTR_OUT,
    ENTRY_OUT,
    FORGET_IN,
    IN_HEADER,
    INIT_OUT,
    OPEN_IN,
    OPEN_OUT,
    OUT_HEADER,
    READ_IN,
    Opcode,
)
from fsd.testing.driver import F_NEXT, F_WRITE
from fsd.testing.frontend import VhostUserFrontend
from fsd.testing.serve import ServeProcess
from fsd.vhost_user.messages import (
    SINGLE_REGION,
    U64,
    VRING_STATE,
    FrontendRequest,
    HeaderFlags,
)
from fsd.virtio_fs import NUM_QUEUES

R = FrontendRequest
INIT_IN = struct.Struct("<IIIIII40x")  # major, minor, max_readahead, flags, flags2, unused
FUSE_ROOT = 1


def fuse(opcode: int, unique: int, nodeid: int, body: bytes = b"") -> bytes:
    return IN_HEADER.pack(IN_HEADER.size + len(body), opcode, unique, nodeid, 0, 0, 1, 0, 0) + body


def reply(data: bytes, unique: int) -> tuple[int, bytes]:
    length, error, got_unique = OUT_HEADER.unpack_from(data)
    assert got_unique == unique and length == len(data)
    return -error, data[OUT_HEADER.size :]


def init(fe: VhostUserFrontend) -> None:
    body = INIT_IN.pack(7, 38, 131072, 0x7BFFFFFB, 0, 0)
    error, out = reply(fe.request(fuse(Opcode.INIT, 2, 0, body)), 2)
    assert error == 0
    major, minor, *_ = INIT_OUT.unpack_from(out)
    assert (major, minor >= 31) == (7, True)


def lookup(fe: VhostUserFrontend, name: bytes, unique: int = 10) -> int:
    error, out = reply(fe.request(fuse(Opcode.LOOKUP, unique, FUSE_ROOT, name + b"\0")), unique)
    assert error == 0
    nodeid: int = ENTRY_OUT.unpack_from(out)[0]
    return nodeid


def test_serves_a_file_to_a_driver(frontend: VhostUserFrontend, shared_dir: Path) -> None:
    content = os.urandom(300 * 1024)
    (shared_dir / "data.bin").write_bytes(content)
    frontend.start()
    init(frontend)
    error, out = reply(frontend.request(fuse(Opcode.GETATTR, 4, FUSE_ROOT, bytes(16))), 4)
    assert error == 0
    assert stat.S_ISDIR(ATTR_OUT.unpack_from(out)[12])  # the root's st_mode
    nodeid = lookup(frontend, b"data.bin")
    error, out = reply(
        frontend.request(fuse(Opcode.OPEN, 11, nodeid, OPEN_IN.pack(os.O_RDONLY, 0))), 11
    )
    fh = OPEN_OUT.unpack_from(out)[0]
    # A 256 KiB READ into 64 page-sized writable descriptors, like the guest's readahead.
    read_in = READ_IN.pack(fh, 4096, 256 * 1024, 0, 0, os.O_RDONLY, 0)
    q = frontend.queues[1]
    head = q.add_request([fuse(Opcode.READ, 12, nodeid, read_in)], [16] + [4096] * 64)
    frontend.kick(1)
    [(used_head, length)] = frontend.wait_used(1)
    assert used_head == head and length == 16 + 256 * 1024
    error, data = reply(q.written(head, length), 12)
    assert error == 0 and data == content[4096 : 4096 + 256 * 1024]


def test_write_lands_in_the_host_file(frontend: VhostUserFrontend, shared_dir: Path) -> None:
    frontend.start(add_mem_reg=False)  # SET_MEM_TABLE path
    init(frontend)
    create_in = struct.pack("<IIII", os.O_WRONLY | os.O_CREAT, 0o644, 0o022, 0)
    error, out = reply(
        frontend.request(fuse(Opcode.CREATE, 20, FUSE_ROOT, create_in + b"new.bin\0")), 20
    )
    assert error == 0
    nodeid = ENTRY_OUT.unpack_from(out)[0]
    fh = OPEN_OUT.unpack_from(out, ENTRY_OUT.size)[0]
    payload = os.urandom(8 * 4096)
    write_in = struct.pack("<QQIIQII", fh, 0, len(payload), 0, 0, 0, 0)
    pages = [payload[i : i + 4096] for i in range(0, len(payload), 4096)]
    data = frontend.request(
        [fuse(Opcode.WRITE, 21, nodeid, write_in + payload)[: IN_HEADER.size + 40], *pages]
    )
    error, out = reply(data, 21)
    assert error == 0 and struct.unpack_from("<I", out)[0] == len(payload)
    assert (shared_dir / "new.bin").read_bytes() == payload


def test_hot_plugged_memory_serves_requests(frontend: VhostUserFrontend) -> None:
    frontend.start()
    init(frontend)
    gpa = 1 << 32
    extra = frontend.hotplug_region(gpa, 1 << 20)
    request = fuse(Opcode.GETATTR, 70, FUSE_ROOT, bytes(16))
    extra[: len(request)] = request
    q = frontend.queues[1]
    head = q.add_chain([(gpa, len(request), 0), (gpa + 4096, 256, F_WRITE)])
    frontend.kick(1)
    [(used_head, length)] = frontend.wait_used(1)
    assert used_head == head
    error, out = reply(bytes(extra[4096 : 4096 + length]), 70)
    assert error == 0
    assert stat.S_ISDIR(ATTR_OUT.unpack_from(out)[12])
    extra.release()


def test_forget_on_the_hiprio_queue_gets_no_reply(frontend: VhostUserFrontend) -> None:
    frontend.start()
    init(frontend)
    nodeid = FUSE_ROOT
    q = frontend.queues[0]
    head = q.add_request([fuse(Opcode.FORGET, 31, nodeid, FORGET_IN.pack(1))], [], indirect=False)
    frontend.kick(0)
    assert frontend.wait_used(0) == [(head, 0)]


def test_bad_chain_is_returned_empty_and_the_queue_goes_on(frontend: VhostUserFrontend) -> None:
    frontend.start()
    init(frontend)
    q = frontend.queues[1]
    # A chain whose buffer lies beyond guest memory, then one that loops on itself.
    beyond = q.add_chain([(frontend.memory_size + 4096, 64, 0), (0x100000, 16, F_WRITE)])
    looped = q.free[0]
    q.add_chain([(0x100000, 40, F_NEXT)], indirect=False)
    struct.pack_into("<H", frontend.memory, q.desc_gpa + 16 * looped + 14, looped)
    frontend.kick(1)
    used = frontend.wait_used(1, count=2)
    assert sorted(used) == sorted([(beyond, 0), (looped, 0)])
    error, _ = reply(frontend.request(fuse(Opcode.GETATTR, 40, FUSE_ROOT, bytes(16))), 40)
    assert error == 0


def test_malformed_fuse_request_gets_an_errno(frontend: VhostUserFrontend) -> None:
    frontend.start()
    init(frontend)
    short_lookup = fuse(Opcode.LOOKUP, 50, FUSE_ROOT, b"no-terminator")
    assert reply(frontend.request(short_lookup), 50)[0] == errno.EINVAL
    assert reply(frontend.request(fuse(4242, 51, FUSE_ROOT)), 51)[0] == errno.ENOSYS


def test_bad_vhost_user_messages_are_refused_not_fatal(frontend: VhostUserFrontend) -> None:
    need_reply = 1 | HeaderFlags.NEED_REPLY
    frontend.get_u64(R.GET_FEATURES)
    frontend.set_u64(R.SET_PROTOCOL_FEATURES, 1 << 3)  # REPLY_ACK
    frontend.send(R.SET_FEATURES, U64.pack(1 << 30))
    frontend.send(999, b"junk", flags=need_reply)
    assert U64.unpack(frontend.receive_reply(999))[0] == 1
    frontend.send(R.SET_VRING_NUM, VRING_STATE.pack(9, 128), flags=need_reply)
    assert U64.unpack(frontend.receive_reply(R.SET_VRING_NUM))[0] == 1
    frontend.send(R.SET_VRING_NUM, VRING_STATE.pack(1, 128), flags=need_reply)
    assert U64.unpack(frontend.receive_reply(R.SET_VRING_NUM))[0] == 0


def test_poweroff_reports_ring_bases_and_disconnect_exits_cleanly(
    frontend: VhostUserFrontend, daemon: ServeProcess
) -> None:
    frontend.start()
    init(frontend)
    lookup(frontend, b".", 60)
    assert frontend.stop() == [0, 2]
    frontend.close()
    status, err = daemon.stop(None)
    assert status == 0, err
    assert "front-end disconnected" in err
    assert not daemon.socket_path.exists()


def test_sigterm_exits_zero_and_removes_the_socket(daemon: ServeProcess) -> None:
    status, err = daemon.stop(signal.SIGTERM)
    assert status == 0, err
    assert not daemon.socket_path.exists()


def test_stale_socket_file_is_replaced(shared_dir: Path, socket_path: Path) -> None:
    import socket as socket_module

    stale = socket_module.socket(socket_module.AF_UNIX)
    stale.bind(str(socket_path))
    stale.close()
    serve = ServeProcess(shared_dir, socket_path)
    fe = VhostUserFrontend(str(socket_path))
    assert fe.get_u64(R.GET_QUEUE_NUM) == NUM_QUEUES
    fe.close()
    assert serve.stop(None)[0] == 0


def test_refuses_a_socket_path_that_is_not_a_socket(shared_dir: Path, socket_path: Path) -> None:
    socket_path.write_text("precious")
    with pytest.raises(RuntimeError, match="not a socket"):
        ServeProcess(shared_dir, socket_path)
    assert socket_path.read_text() == "precious"


def test_unmappable_memory_fd_is_refused_not_fatal(frontend: VhostUserFrontend) -> None:
    frontend.get_u64(R.GET_FEATURES)
    frontend.set_u64(R.SET_PROTOCOL_FEATURES, (1 << 3) | (1 << 15))  # REPLY_ACK, MEM_SLOTS
    frontend.send(R.SET_FEATURES, U64.pack((1 << 32) | (1 << 30)))
    not_memory = os.eventfd(0)
    payload = SINGLE_REGION.pack(0, 0, 1 << 20, 0x7F00_0000_0000, 0)
    frontend.send(R.ADD_MEM_REG, payload, [not_memory], flags=1 | HeaderFlags.NEED_REPLY)
    assert U64.unpack(frontend.receive_reply(R.ADD_MEM_REG))[0] == 1
    os.close(not_memory)
    assert frontend.get_u64(R.GET_QUEUE_NUM) == NUM_QUEUES  # still serving


def test_kick_fd_that_cannot_be_polled_leaves_the_daemon_up(
    frontend: VhostUserFrontend, tmp_path: Path
) -> None:
    frontend.start()
    init(frontend)
    with open(tmp_path / "plain", "w") as plain:
        frontend.set_vring_fd(R.SET_VRING_KICK, 1, plain.fileno())
    assert frontend.get_u64(R.GET_QUEUE_NUM) == NUM_QUEUES


def test_sigterm_with_running_queues_exits_zero(
    frontend: VhostUserFrontend, daemon: ServeProcess
) -> None:
    frontend.start()
    init(frontend)
    status, err = daemon.stop(signal.SIGTERM)
    assert status == 0, err
    assert not daemon.socket_path.exists()


@pytest.mark.parametrize("kind", ["listening", "connected"])
def test_inherited_fd(shared_dir: Path, socket_path: Path, kind: str) -> None:
    """``--fd N``: virtiofsd passes a listening socket, crosvm an already connected one."""
    import socket as socket_module
    import subprocess
    import sys

    if kind == "listening":
        server = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM)
        server.bind(str(socket_path))
        server.listen(1)
        inherited, ours = server, None
    else:
        inherited, ours = socket_module.socketpair(socket_module.AF_UNIX)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fsd", "serve", "--fd", str(inherited.fileno()),
         "--shared-dir", str(shared_dir)],
        pass_fds=[inherited.fileno()],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    inherited.close()
    try:
        if ours is None:
            fe = VhostUserFrontend(str(socket_path))
        else:
            fe = VhostUserFrontend(None, sock=ours)
        assert fe.get_u64(R.GET_QUEUE_NUM) == NUM_QUEUES
        fe.start()
        init(fe)
        fe.close()
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_socket_is_private_to_the_daemons_user(daemon: ServeProcess) -> None:
    """Whoever connects first is taken as the VMM: nobody else may connect (0600)."""
    assert stat.S_IMODE(os.stat(daemon.socket_path).st_mode) == 0o600


def test_socket_group_may_connect(shared_dir: Path, socket_path: Path) -> None:
    import grp

    group = grp.getgrgid(0).gr_name
    serve = ServeProcess(shared_dir, socket_path, "--socket-group", group)
    try:
        info = os.stat(socket_path)
        assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o660, 0)
    finally:
        serve.stop()


def test_a_live_socket_is_not_taken_over(daemon: ServeProcess, shared_dir: Path) -> None:
    """A second daemon on the same path refuses to start and leaves the first one's socket."""
    import subprocess
    import sys

    second = subprocess.run(
        [sys.executable, "-m", "fsd", "serve", "--socket-path", str(daemon.socket_path),
         "--shared-dir", str(shared_dir)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert second.returncode == 2  # a start-up error (fsd.cli checks before binding)
    assert "another server is listening" in second.stderr
    assert daemon.socket_path.exists()
    assert daemon.proc.poll() is None
    fe = VhostUserFrontend(str(daemon.socket_path))
    assert fe.get_u64(R.GET_QUEUE_NUM) == NUM_QUEUES
    fe.close()
