"""HookedHandler: real FUSE request bytes through the hooks and a real PassthroughFs."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fsd.fs import FsOptions, PassthroughFs
from fsd.fuse import abi
from fsd.fuse.requests import decode
from fsd.fuse.server import FuseServer
from fsd.hookinfo import FuseRequestInfo, describe
from fsd.hooks_fuse import HookedHandler, make_request_handler
from fsd.hookspecs import hookimpl
from fsd.plugins import Plugins
from fsd.testing import fuse_requests as fr
from fsd.testing.fuse_requests import FuseClient
from fsd.testing.plugins import Recorder, hooked_client, plugin_manager


def checks(rec: Recorder) -> list[FuseRequestInfo]:
    return [c["request"] for c in rec.of("fsd_fuse_check")]


def audits(rec: Recorder) -> list[tuple[str, int, int]]:
    return [(c["request"].op, c["error"], c["bytes_moved"]) for c in rec.of("fsd_fuse_audit")]


def last(rec: Recorder) -> FuseRequestInfo:
    return checks(rec)[-1]


def test_no_fuse_hooks_means_the_server_itself(share: Path) -> None:
    class OnlyAllowlist:
        @hookimpl
        def fsd_allowlist_check(self, change: Any) -> str | None:
            return None

    server = FuseServer(PassthroughFs(share, FsOptions()))
    assert make_request_handler(server, None) == server.handle
    assert make_request_handler(server, Plugins()) == server.handle
    assert make_request_handler(server, plugin_manager(OnlyAllowlist())) == server.handle
    hooked = make_request_handler(server, plugin_manager(Recorder()))
    assert isinstance(getattr(hooked, "__self__", None), HookedHandler)


def test_name_operations_carry_paths_and_names(share: Path) -> None:
    rec = Recorder()
    with hooked_client(share, rec) as c:
        d = c.mkdir(1, "dir", 0o750)
        assert (last(rec).op, last(rec).path, last(rec).name, last(rec).mode) == (
            "MKDIR", "/", "dir", 0o750,
        )  # fmt: skip
        assert last(rec).entry_path == "/dir" and last(rec).writes
        entry, fh = c.create(d.nodeid, "f.txt", os.O_RDWR)
        info = last(rec)
        assert (info.op, info.entry_path, info.op_class) == ("CREATE", "/dir/f.txt", "namespace")
        assert info.flags is not None and info.flags & os.O_RDWR
        c.ok(fr.mknod(c.next_unique(), d.nodeid, "fifo", stat.S_IFIFO | 0o600))
        assert last(rec).entry_path == "/dir/fifo"
        c.ok(fr.symlink(c.next_unique(), 1, "ln", "dir/f.txt"))
        assert (last(rec).entry_path, last(rec).target) == ("/ln", "dir/f.txt")
        c.ok(fr.link(c.next_unique(), entry.nodeid, 1, "hard"))
        info = last(rec)
        assert (info.op, info.path, info.new_path, info.newname) == (
            "LINK",
            "/dir/f.txt",
            "/",
            "hard",
        )
        assert info.paths() == ("/dir/f.txt", "/hard")
        c.ok(fr.rename(c.next_unique(), d.nodeid, "f.txt", 1, "moved"))
        info = last(rec)
        assert info.paths() == ("/dir/f.txt", "/moved")
        # The inode table follows the rename: later requests on the nodeid see the new path.
        c.getattr(entry.nodeid)
        assert (last(rec).op, last(rec).path) == ("GETATTR", "/moved")
        c.ok(fr.rename2(c.next_unique(), 1, "moved", d.nodeid, "back", abi.RENAME_NOREPLACE))
        info = last(rec)
        assert (info.op, info.flags) == ("RENAME2", abi.RENAME_NOREPLACE)
        assert info.paths() == ("/moved", "/dir/back")
        c.ok(fr.unlink(c.next_unique(), d.nodeid, "fifo"))
        assert (last(rec).op, last(rec).entry_path) == ("UNLINK", "/dir/fifo")
        c.lookup(1, "dir")
        assert (last(rec).op, last(rec).entry_path, last(rec).writes) == ("LOOKUP", "/dir", False)
        c.ok(fr.release(c.next_unique(), entry.nodeid, fh))
    assert (share / "dir" / "back").is_file() and (share / "hard").is_file()


def test_data_operations_report_bytes_moved(share: Path) -> None:
    rec = Recorder()
    with hooked_client(share, rec) as c:
        entry, fh = c.create(1, "data", os.O_RDWR)
        assert c.write(entry.nodeid, fh, 0, b"x" * 5000) == 5000
        assert (last(rec).op, last(rec).offset, last(rec).size, last(rec).writes) == (
            "WRITE", 0, 5000, True,
        )  # fmt: skip
        assert c.read(entry.nodeid, fh, 1000, 8192) == b"x" * 4000
        assert last(rec).path == "/data" and last(rec).op_class == "read"
        out, fh2 = c.create(1, "copy", os.O_RDWR)
        c.ok(fr.copy_file_range(c.next_unique(), entry.nodeid, fh, 0, out.nodeid, fh2, 0, 100))
        assert (last(rec).path, last(rec).new_path) == ("/data", "/copy")
        c.ok(fr.setattr(c.next_unique(), entry.nodeid, mode=0o600))
        assert (last(rec).op, last(rec).mode, last(rec).writes) == ("SETATTR", 0o600, True)
        ro = c.open(entry.nodeid, os.O_RDONLY)
        assert (last(rec).op_class, last(rec).writes) == ("read", False)
        c.open(entry.nodeid, os.O_WRONLY | os.O_TRUNC)
        assert (last(rec).op_class, last(rec).writes) == ("write", True)
        assert ro
    moved = audits(rec)
    assert ("WRITE", 0, 5000) in moved and ("READ", 0, 4000) in moved
    assert ("COPY_FILE_RANGE", 0, 100) in moved


def test_errors_are_audited_with_their_errno(share: Path) -> None:
    rec = Recorder()
    with hooked_client(share, rec) as c:
        assert c.errno_of(fr.lookup(c.next_unique(), 1, "missing")) == errno.ENOENT
        assert c.errno_of(fr.getattr(c.next_unique(), 999)) == errno.EBADF
    assert audits(rec)[-2:] == [("LOOKUP", errno.ENOENT, 0), ("GETATTR", errno.EBADF, 0)]
    assert checks(rec)[-1].path is None  # an unknown nodeid has no path


def test_denial_answers_the_errno_and_skips_the_filesystem(share: Path) -> None:
    rec = Recorder()
    rec.deny = lambda r: errno.EPERM if r.name == "nope" else None
    with hooked_client(share, rec) as c:
        unique = c.next_unique()
        reply = fr.parse_reply(c.call(fr.mkdir(unique, 1, "nope")))
        assert (reply.error, reply.unique, reply.payload) == (-errno.EPERM, unique, b"")
        c.mkdir(1, "yes")
    assert not (share / "nope").exists() and (share / "yes").is_dir()
    assert audits(rec)[-2:] == [("MKDIR", errno.EPERM, 0), ("MKDIR", 0, 0)]


@pytest.mark.parametrize("transport", ["vhost-user", "dev-fuse"])
def test_requests_without_reply_cannot_be_denied(share: Path, transport: Any) -> None:
    rec = Recorder()
    rec.deny = lambda r: errno.EPERM
    with hooked_client(share, rec, transport=transport) as c:
        assert c.call(fr.forget(c.next_unique(), 5, 1)) == b""
        assert c.call(fr.batch_forget(c.next_unique(), [(5, 1)])) == b""
        assert c.call(fr.interrupt(c.next_unique(), 2)) == b""
        destroy = c.call(fr.destroy(c.next_unique()))
    assert checks(rec) == []
    assert [a[0] for a in audits(rec)] == ["INIT", "FORGET", "BATCH_FORGET", "INTERRUPT", "DESTROY"]
    if transport == "vhost-user":
        assert destroy == b""
    else:  # on /dev/fuse DESTROY is answered, but not checked either
        assert fr.parse_reply(destroy).error == 0


@pytest.mark.parametrize("how", ["deny", "raise"])
def test_init_and_destroy_are_never_checked_but_audited(share: Path, how: str) -> None:
    """A check that denies or raises on everything must not break the session: INIT still
    succeeds (the guest mounts and sees the denials on its requests) and is audited."""

    def deny(request: FuseRequestInfo) -> int:
        if how == "raise":
            raise RuntimeError("a plugin bug")
        return errno.EPERM

    rec = Recorder()
    rec.deny = deny
    with hooked_client(share, rec, transport="dev-fuse") as c:  # init() raises if INIT fails
        assert c.errno_of(fr.getattr(c.next_unique(), 1)) in (errno.EPERM, errno.EACCES)
        assert fr.parse_reply(c.call(fr.destroy(c.next_unique()))).error == 0
    assert [r.op for r in checks(rec)] == ["GETATTR"]
    assert [a[:2] for a in audits(rec)][0::2] == [("INIT", 0), ("DESTROY", 0)]


class Broken:
    def __init__(self, how: str) -> None:
        self.how = how

    @hookimpl
    def fsd_fuse_check(self, request: FuseRequestInfo) -> Any:
        if request.op == "INIT":
            return None
        if self.how == "raise":
            raise ValueError("bug")
        if self.how == "str":
            return "EPERM"
        if self.how == "async":

            async def later() -> None:
                pass

            return later()
        return None

    @hookimpl
    def fsd_fuse_audit(self, request: FuseRequestInfo) -> None:
        raise RuntimeError("audit bug")


@pytest.mark.parametrize("how", ["raise", "str", "async"])
def test_broken_plugins_fail_closed_and_never_crash(share: Path, how: str, caplog: Any) -> None:
    with hooked_client(share, Broken(how)) as c:
        assert c.errno_of(fr.mkdir(c.next_unique(), 1, "d")) == errno.EACCES
        assert c.errno_of(fr.getattr(c.next_unique(), 1)) == errno.EACCES
    assert not (share / "d").exists()
    assert "audit bug" in caplog.text


def test_malformed_requests_are_refused_without_reaching_the_filesystem(share: Path) -> None:
    rec = Recorder()
    with hooked_client(share, rec) as c:
        n = len(rec.calls)
        no_nul = fr.request(
            abi.Opcode.MKDIR, c.next_unique(), 1, abi.MKDIR_IN.pack(0o755, 0) + b"x"
        )
        assert c.errno_of(no_nul) == errno.EINVAL
        short = fr.request(abi.Opcode.RENAME, c.next_unique(), 1, b"\1\0")
        assert c.errno_of(short) == errno.EINVAL
        assert c.call(b"\0" * 10) == b""  # shorter than a header: dropped, as the server does
        lying = bytearray(fr.lookup(c.next_unique(), 1, "a"))
        lying[0:4] = (1 << 20).to_bytes(4, "little")  # in_header.len beyond the request
        assert c.errno_of(bytes(lying)) == errno.EINVAL
        # None reached the hooks: the request is decoded (and refused) before they see it.
        assert len(rec.calls) == n
    assert os.listdir(share) == []


def test_split_segments_decode_the_same(share: Path) -> None:
    rec = Recorder()
    with hooked_client(share, rec) as c:
        (share / "src").write_bytes(b"")
        c.lookup(1, "src")
        c.call(fr.rename(c.next_unique(), 1, "src", 1, "dst" * 20), split=7)
        assert last(rec).paths() == ("/src", "/" + "dst" * 20)
        entry, fh = c.create(1, "w", os.O_RDWR)
        c.call(fr.write(c.next_unique(), entry.nodeid, fh, 0, b"y" * 100), split=13)
        assert (last(rec).op, last(rec).size) == ("WRITE", 100)
    assert (share / "w").read_bytes() == b"y" * 100


def test_no_room_for_a_denial_reply(share: Path) -> None:
    rec = Recorder()
    rec.deny = lambda r: errno.EPERM if r.op == "GETATTR" else None
    with hooked_client(share, rec) as c:
        assert c.call(fr.getattr(c.next_unique(), 1), capacity=8) == b""


def test_describe_reads_the_decoded_request() -> None:
    """Plugins see the request the server decoded: describe() parses nothing itself."""
    req = decode([memoryview(fr.lookup(7, 1, "name"))])
    info = describe(req, lambda nodeid: "/" if nodeid == 1 else None, "dev-fuse")
    assert (info.op, info.unique, info.entry_path, info.transport) == (
        "LOOKUP",
        7,
        "/name",
        "dev-fuse",
    )
    unknown = describe(decode([memoryview(fr.request(99, 3, 1))]), lambda n: "/", "vhost-user")
    assert (unknown.op, unknown.op_class) == ("OPCODE_99", "session")


def test_client_without_hooks_and_with_hooks_agree(share: Path) -> None:
    """The wrapper must not change any reply: compare a hooked and a plain server."""
    (share / "f").write_bytes(b"hello")
    plain_fs = PassthroughFs(share, FsOptions())
    plain = FuseClient(FuseServer(plain_fs))
    plain.init()
    with hooked_client(share, Recorder()) as hooked:
        for c in (plain, hooked):
            c.unique = 100
        makers: list[Callable[[int], bytes]] = [
            lambda u: fr.lookup(u, 1, "f"),
            lambda u: fr.lookup(u, 1, "missing"),
            fr.statfs,
            lambda u: fr.readlink(u, 1),
        ]
        for make in makers:
            a = plain.call(make(plain.next_unique()))
            b = hooked.call(make(hooked.next_unique()))
            assert fr.parse_reply(a).error == fr.parse_reply(b).error
            assert len(a) == len(b)
    plain_fs.close()
