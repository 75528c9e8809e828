"""FuseServer against a small fake filesystem: decoding, dispatch, encoding, errno mapping.

The server is written against ``fsd.fuse.filesystem.Filesystem``; these tests give it a fake
that records what it was asked (and with which context), so the server's own rules are
checked without a host directory. The passthrough behind the same server is tested through
request bytes in tests/fs/.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsd.fuse import FuseServer, abi
from fsd.fuse.abi import Opcode
from fsd.fuse.errors import HiddenByAllowlist
from fsd.fuse.filesystem import Context, Entry, Filesystem, FilesystemConfig
from fsd.fuse.replies import NO_REPLY
from fsd.fuse.requests import OPS, Request, decode
from fsd.sgbuf import four_segments
from fsd.testing import fuse_requests as fr
from fsd.testing.fuse_requests import FuseClient

_NS = {"st_atime_ns": 1_000_000_001, "st_mtime_ns": 2_000_000_002, "st_ctime_ns": 3_000_000_003}
_STAT = os.stat_result(
    (0o100644, 42, 7, 1, 1000, 1000, 5, 1, 2, 3),
    {**_NS, "st_blocks": 8, "st_blksize": 4096, "st_rdev": 0},
)


class FakeFs(Filesystem):
    """Serves a root with one file (nodeid 2, "f"); every other operation is ENOSYS."""

    def __init__(self, config: FilesystemConfig | None = None) -> None:
        self.config = config or FilesystemConfig()
        self.calls: list[tuple[str, tuple[int, int, int, int], tuple[Any, ...]]] = []
        self.fail: BaseException | None = None

    def _record(self, op: str, ctx: Context, *args: Any) -> None:
        self.calls.append((op, (ctx.uid, ctx.gid, ctx.pid, ctx.unique), args))
        if self.fail is not None:
            raise self.fail

    def lookup(self, ctx: Context, parent: int, name: bytes) -> Entry:
        self._record("lookup", ctx, parent, name)
        if name != b"f":
            raise FileNotFoundError(errno.ENOENT, "no such name")
        return 2, _STAT

    def getattr(self, ctx: Context, nodeid: int) -> os.stat_result:
        self._record("getattr", ctx, nodeid)
        return _STAT

    def read(
        self, ctx: Context, nodeid: int, fh: int, offset: int, into: Sequence[memoryview]
    ) -> int:
        self._record("read", ctx, nodeid, fh, offset)
        data = b"abcdefgh"[offset:]
        n = 0
        for view in into:
            chunk = data[n : n + len(view)]
            view[: len(chunk)] = chunk
            n += len(chunk)
        return n

    def write(
        self, ctx: Context, nodeid: int, fh: int, offset: int, data: Sequence[memoryview]
    ) -> int:
        self._record("write", ctx, nodeid, fh, offset, b"".join(bytes(v) for v in data))
        return sum(map(len, data)) - 1  # a short write: the reply must say so


@pytest.fixture
def fake() -> FakeFs:
    return FakeFs()


@pytest.fixture
def client(fake: FakeFs) -> FuseClient:
    c = FuseClient(FuseServer(fake))
    c.init()
    return c


def test_the_filesystem_gets_the_callers_context(fake: FakeFs, client: FuseClient) -> None:
    data = fr.request(Opcode.LOOKUP, 40, abi.ROOT_ID, b"f\0", uid=1000, gid=100)
    entry = fr.parse_entry(client.ok(data))
    assert (entry.nodeid, entry.attr.ino, entry.attr.size) == (2, 42, 5)
    assert fake.calls[-1] == ("lookup", (1000, 100, 0, 40), (abi.ROOT_ID, b"f"))


def test_errors_become_errnos_in_one_place(
    fake: FakeFs, client: FuseClient, caplog: pytest.LogCaptureFixture
) -> None:
    assert client.errno_of(fr.lookup(client.next_unique(), 1, "missing")) == errno.ENOENT
    assert client.errno_of(fr.readlink(client.next_unique(), 1)) == errno.ENOSYS  # a default
    fake.fail = ValueError("2**64 does not fit")
    assert client.errno_of(fr.getattr(client.next_unique(), 1)) == errno.EINVAL
    fake.fail = RuntimeError("a bug")
    with caplog.at_level(logging.ERROR, logger="fsd.fuse"):
        assert client.errno_of(fr.getattr(client.next_unique(), 1)) == errno.EIO
    assert "internal error serving GETATTR" in caplog.text


def test_negative_entries_but_never_for_hidden_names() -> None:
    class Hiding(FakeFs):
        def lookup(self, ctx: Context, parent: int, name: bytes) -> Entry:
            if name == b"hidden":
                raise HiddenByAllowlist(errno.ENOENT, "hidden")
            return super().lookup(ctx, parent, name)

    c = FuseClient(FuseServer(Hiding(FilesystemConfig(negative_timeout=3))))
    c.init()
    negative = fr.parse_entry(c.ok(fr.lookup(c.next_unique(), 1, "missing")))
    assert (negative.nodeid, negative.entry_valid) == (0, 3)  # cached as absent for 3 s
    assert c.errno_of(fr.lookup(c.next_unique(), 1, "hidden")) == errno.ENOENT


def test_timeouts_and_owners_come_from_the_filesystems_config() -> None:
    config = FilesystemConfig(
        entry_timeout=2.5, attr_timeout=7, owner_to_client=(lambda u: u + 1, lambda g: g + 2)
    )
    c = FuseClient(FuseServer(FakeFs(config)))
    c.init()
    entry = fr.parse_entry(c.ok(fr.lookup(c.next_unique(), 1, "f")))
    assert (entry.entry_valid, entry.entry_valid_nsec, entry.attr_valid) == (2, 500_000_000, 7)
    assert (entry.attr.uid, entry.attr.gid) == (1001, 1002)


def test_requests_before_init_and_unknown_opcodes(fake: FakeFs) -> None:
    c = FuseClient(FuseServer(fake))
    assert c.errno_of(fr.getattr(2, 1)) == errno.EIO
    assert fake.calls == []
    c.init()
    assert c.errno_of(fr.request(9999, c.next_unique(), 1)) == errno.ENOSYS


def test_data_moves_and_the_outcome_is_recorded_on_the_request(fake: FakeFs) -> None:
    server = FuseServer(fake)
    FuseClient(server).init()
    space = bytearray(4096)
    req = decode([memoryview(fr.read(8, 2, 5, 2, 100))])
    n = server.execute(req, [memoryview(space)])
    assert fr.parse_reply(bytes(space[:n])).payload == b"cdefgh"
    assert (req.error, req.moved) == (0, 6)
    req = decode([memoryview(fr.write(10, 2, 5, 0, b"xyz"))])
    n = server.execute(req, [memoryview(space)])
    assert fr.parse_write(fr.parse_reply(bytes(space[:n])).payload) == 2
    assert (req.error, req.moved) == (0, 2)
    assert fake.calls[-1][2] == (2, 5, 0, b"xyz")
    req = decode([memoryview(fr.readlink(12, 2))])
    server.execute(req, [memoryview(space)])
    assert (req.error, req.moved) == (errno.ENOSYS, 0)


def test_requests_that_create_client_state_need_room_for_their_reply(fake: FakeFs) -> None:
    c = FuseClient(FuseServer(fake))
    c.init()
    calls = len(fake.calls)
    reply = fr.parse_reply(c.call(fr.lookup(c.next_unique(), 1, "f"), capacity=40))
    assert reply.error == -errno.EINVAL
    assert len(fake.calls) == calls  # refused before the lookup was counted


def test_no_reply_and_destroy_by_transport(fake: FakeFs) -> None:
    for transport, destroy_reply in (("vhost-user", NO_REPLY), ("dev-fuse", 16)):
        server = FuseServer(fake, transport=transport)  # type: ignore[arg-type]
        FuseClient(server).init()
        space = bytearray(64)
        for data in (fr.forget(2, 2, 1), fr.batch_forget(4, [(2, 1)]), fr.interrupt(6, 2)):
            assert server.handle([memoryview(data)], [memoryview(space)]) == (NO_REPLY)
        destroy = [memoryview(fr.destroy(8))]
        assert server.handle(destroy, [memoryview(space)]) == destroy_reply


def test_the_server_keeps_no_per_request_state(fake: FakeFs) -> None:
    """Two requests decoded first and served in the other order get their own answers."""
    server = FuseServer(fake)
    FuseClient(server).init()
    first = decode([memoryview(fr.request(Opcode.GETATTR, 20, 1, uid=5, gid=6))])
    second = decode([memoryview(fr.request(Opcode.GETATTR, 22, 1, uid=7, gid=8))])
    for req in (second, first):
        space = bytearray(256)
        n = server.execute(req, [memoryview(space)])
        assert fr.parse_reply(bytes(space[:n])).unique == req.unique
    assert [call[1] for call in fake.calls[-2:]] == [(7, 8, 0, 22), (5, 6, 0, 20)]


def test_every_decoded_opcode_has_a_handler_and_named_fields() -> None:
    server = FuseServer(FakeFs())
    assert set(OPS) <= set(server._handlers)
    for opcode, op in OPS.items():
        assert all(field.isidentifier() for field in op.fields), Opcode(opcode).name


def test_a_request_is_its_context() -> None:
    req = decode([memoryview(fr.request(Opcode.GETATTR, 30, 9, uid=3, gid=4))])
    assert isinstance(req, Request) and isinstance(req, Context)
    assert (req.opcode, req.unique, req.nodeid, req.uid, req.gid, req.args) == (
        Opcode.GETATTR, 30, 9, 3, 4, (),
    )  # fmt: skip


def test_requests_and_errors_are_counted_per_opcode(fake: FakeFs, client: FuseClient) -> None:
    stats = client.server.stats  # type: ignore[attr-defined]
    client.ok(fr.getattr(client.next_unique(), 1))
    client.errno_of(fr.lookup(client.next_unique(), 1, "missing"))
    client.call(b"\0" * 10)
    assert stats.by_opcode()["GETATTR"] == (1, 0)
    assert stats.by_opcode()["LOOKUP"] == (1, 1)
    assert stats.by_opcode()["INIT"] == (1, 0)
    assert stats.malformed == 1


def _cut(buffer: bytes | bytearray, *cuts: int) -> list[memoryview]:
    """Views of ``buffer`` cut at the given offsets (empty views kept: a chain may have them)."""
    view = memoryview(buffer)
    points = [0, *cuts, len(buffer)]
    return [view[a:b] for a, b in itertools.pairwise(points)]


@pytest.mark.parametrize(
    "request_cuts",
    [(), (40,), (20,), (40, 60), (40, 80)],
    ids=["one buffer", "virtio_fs", "header split", "arguments split", "empty tail"],
)
@pytest.mark.parametrize(
    ("reply_cuts", "size"),
    [((), 100), ((16,), 100), ((16,), 4), ((16, 19), 100), ((10,), 100)],
    ids=["one buffer", "virtio_fs", "short read", "data pages", "header split"],
)
def test_read_is_answered_alike_in_every_layout(
    fake: FakeFs, request_cuts: tuple[int, ...], reply_cuts: tuple[int, ...], size: int
) -> None:
    """READ skips the general decode in the layouts transports give it (handle()'s direct
    path) and takes it in every other: the answer, the context and the counts are the same."""
    server = FuseServer(fake)
    FuseClient(server).init()
    data = fr.request(Opcode.READ, 8, 2, abi.READ_IN.pack(5, 2, size, 0, 0, 0, 0), uid=7, gid=9)
    space = bytearray(4096)
    n = server.handle(_cut(data, *request_cuts), _cut(space, *reply_cuts))
    reply = fr.parse_reply(bytes(space[:n]))
    assert (reply.error, reply.unique, reply.payload) == (0, 8, b"cdefgh"[:size])
    assert fake.calls[-1] == ("read", (7, 9, 0, 8), (2, 5, 2))
    assert server.stats.by_opcode()["READ"] == (1, 0)


def test_read_failures_are_answered_and_counted_like_any_request(
    fake: FakeFs, caplog: pytest.LogCaptureFixture
) -> None:
    server = FuseServer(fake)
    space = bytearray(256)

    def read_errno(*cuts: int, length: int | None = None) -> int:
        data = bytearray(fr.read(10, 2, 5, 0, 100))
        if length is not None:
            abi.IN_HEADER.pack_into(data, 0, length, *abi.IN_HEADER.unpack_from(data)[1:])
        n = server.handle(_cut(data, *cuts), [memoryview(space)])
        reply = fr.parse_reply(bytes(space[:n]))
        assert reply.unique == 10
        return -reply.error

    assert read_errno(40) == errno.EIO  # before INIT: nothing but INIT is served
    assert fake.calls == []
    FuseClient(server).init()
    fake.fail = OSError(errno.EBADF, "not open")
    assert read_errno() == read_errno(40) == errno.EBADF
    fake.fail = RuntimeError("a bug")
    with caplog.at_level(logging.ERROR, logger="fsd.fuse"):
        assert read_errno(40) == errno.EIO
    assert "internal error serving READ" in caplog.text
    fake.fail = None
    assert read_errno(40, length=70) == errno.EINVAL  # in_header.len and the bytes disagree
    assert server.stats.by_opcode()["READ"] == (4, 4)  # the one before INIT counts too
    assert server.stats.malformed == 1
    server.reset()
    assert read_errno(40) == errno.EIO  # DESTROY ends the session: READ is refused again


@pytest.mark.parametrize(
    "request_cuts", [(), (40,), (20,)], ids=["one buffer", "virtio_fs", "split"]
)
@pytest.mark.parametrize("reply_cuts", [(), (4,)], ids=["one segment", "two segments"])
def test_a_read_without_room_for_a_reply_is_dropped_not_raised(
    fake: FakeFs, request_cuts: tuple[int, ...], reply_cuts: tuple[int, ...]
) -> None:
    """Ten bytes of reply space hold no fuse_out_header: nothing is written and nothing
    escapes handle(), whichever path the READ takes."""
    server = FuseServer(fake)
    FuseClient(server).init()
    space = bytearray(10)
    data = fr.read(8, 2, 5, 0, 100)
    assert server.handle(_cut(data, *request_cuts), _cut(space, *reply_cuts)) == NO_REPLY
    assert space == bytearray(10)


def test_only_read_takes_reads_path(fake: FakeFs, client: FuseClient) -> None:
    """handle() looks at the opcode's low byte first: an opcode that shares it with READ is
    not served as a READ."""
    body = abi.READ_IN.pack(5, 0, 100, 0, 0, 0, 0)
    assert client.errno_of(fr.request(Opcode.READ + 256, client.next_unique(), 2, body)) == (
        errno.ENOSYS
    )
    assert all(call[0] != "read" for call in fake.calls)


_FOUR_REQUESTS = {
    "READ": fr.request(Opcode.READ, 8, 2, abi.READ_IN.pack(5, 2, 100, 0, 0, 0, 0), uid=7),
    "short READ": fr.request(Opcode.READ, 8, 2, abi.READ_IN.pack(5, 6, 1, 0, 0, 0, 0)),
    "READ of another file": fr.request(Opcode.READ, 8, 3, abi.READ_IN.pack(5, 0, 9, 0, 0, 0, 0)),
    "READ, bad length": fr.request(Opcode.READ, 8, 2, abi.READ_IN.pack(5, 0, 9, 0, 0, 0, 0))[:70],
    "READ + 256": fr.request(Opcode.READ + 256, 8, 2, abi.READ_IN.pack(5, 0, 9, 0, 0, 0, 0)),
    "GETATTR": fr.getattr(8, 2),
    "LOOKUP": fr.lookup(8, 1, "f"),
}


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(_FOUR_REQUESTS)),
    st.one_of(st.just(40), st.integers(1, 79)),  # Linux cuts after fuse_in_header
    st.booleans(),
    st.sampled_from([10, 16, 40]),
    st.sampled_from([1, 4, 120]),
    st.sampled_from(["before INIT", "served", "after DESTROY"]),
    st.sampled_from([None, OSError(errno.EBADF, "not open"), RuntimeError("a bug")]),
)
def test_four_buffers_are_answered_as_their_segments_would_be(
    name: str,
    cut: int,
    gap: bool,
    header_room: int,
    reply_room: int,
    session: str,
    fail: BaseException | None,
) -> None:
    """handle_four() (a virtqueue's four-buffer chain, read in place) answers exactly as
    handle() answers the same request given as segments: the same reply bytes and length,
    the same calls on the filesystem with the same context, the same counts."""
    data = _FOUR_REQUESTS[name]
    cut = min(cut, len(data) - 1)
    outcomes = []
    for four in (True, False):
        fake = FakeFs()
        server = FuseServer(fake)
        if session != "before INIT":
            FuseClient(server).init()
        if session == "after DESTROY":
            server.reset()
        fake.fail = fail
        region = bytearray(1024)
        o0, l0 = 8, cut
        o1, l1 = o0 + cut + (16 if gap else 0), len(data) - cut
        o2, l2 = 512, header_room
        o3, l3 = o2 + header_room + (8 if gap else 0), reply_room
        region[o0 : o0 + l0] = data[:cut]
        region[o1 : o1 + l1] = data[cut:]
        buffers = (0, memoryview(region), o0, l0, o1, l1, o2, l2, o3, l3)
        n = server.handle_four(buffers) if four else server.handle(*four_segments(buffers))
        outcomes.append((n, bytes(region), fake.calls, server.stats.by_opcode()))
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("length", [1, 4, 39])
def test_a_short_first_buffer_at_the_end_of_memory_is_answered_not_raised(length: int) -> None:
    """A header buffer shorter than fuse_in_header, ending where guest memory ends: nothing
    past it is read, and the request is answered as handle() answers its segments."""
    answers = []
    for four in (True, False):
        server = FuseServer(FakeFs())
        FuseClient(server).init()
        region = bytearray(256)
        region[256 - length :] = fr.read(8, 2, 5, 0, 100)[:length]
        buffers = (0, memoryview(region), 256 - length, length, 0, 40, 64, 16, 80, 100)
        n = server.handle_four(buffers) if four else server.handle(*four_segments(buffers))
        answers.append((n, bytes(region), server.stats.malformed))
    assert answers[0] == answers[1]
