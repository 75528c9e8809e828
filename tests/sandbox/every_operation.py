"""Every FUSE operation fsd serves, with its variants (through an open file or by inode, data
and metadata sync, set-id bits to kill...), sent over vhost-user by the scripted front-end.

Two uses: tests/sandbox/test_every_operation.py runs it against a sandboxed ``fsd serve``
with seccomp on and compares each answer with an unsandboxed one; and it is a workload the
seccomp measurement (contrib/measure-sandbox.py) sees, reaching system calls that guests in
the test bed never cause (fdatasync, truncate by path, fchmod, statx...).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from fsd.fuse import abi
from fsd.fuse.abi import Opcode
from fsd.testing import fuse_requests as fr
from fsd.testing.frontend import VhostUserFrontend
from fsd.testing.guest import fsd_env
from fsd.unix_sockets import is_listening

__all__ = ["Daemon", "exercise"]

ROOT = abi.ROOT_ID


class Daemon:
    """A back-end command (``fsd serve`` or the sandboxed launcher) with its log in a file."""

    def __init__(self, argv: list[str], socket_path: Path, log_path: Path) -> None:
        self.socket_path = socket_path
        self.log_file: IO[str] = open(log_path, "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, *argv], stderr=self.log_file, env=fsd_env(), cwd="/"
        )
        deadline = time.monotonic() + 20
        while not (socket_path.exists() and is_listening(socket_path)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"back-end did not start: {self.log()}")
            time.sleep(0.02)

    def log(self) -> str:
        self.log_file.seek(0)
        return self.log_file.read()

    def wait(self) -> tuple[int, str]:
        """Its exit status (after the front-end hung up) and its log."""
        try:
            status = self.proc.wait(20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        log = self.log()
        self.log_file.close()
        return status, log


class _Session:
    def __init__(self, fe: VhostUserFrontend) -> None:
        self.fe = fe
        self.unique = 100
        self.results: dict[str, int] = {}

    def call(self, label: str, build: object, *args: object, **kwargs: object) -> bytes:
        """Send the request ``build(unique, *args)`` makes; record its errno under ``label``."""
        self.unique += 1
        data = build(self.unique, *args, **kwargs)  # type: ignore[operator]
        reply = fr.parse_reply(self.fe.request(data, reply_size=65536))
        assert reply.unique == self.unique, label
        self.results[label] = -reply.error
        return reply.payload

    def forget(self, label: str, build: object, *args: object) -> None:
        """A request that gets no reply (FORGET, DESTROY): the chain comes back empty."""
        self.unique += 1
        data = build(self.unique, *args)  # type: ignore[operator]
        self.results[label] = len(self.fe.request(data, reply_size=4096))

    def entry(self, label: str, build: object, *args: object, **kwargs: object) -> int:
        payload = self.call(label, build, *args, **kwargs)
        return fr.parse_entry(payload).nodeid if self.results[label] == 0 else 0

    def fh(self, label: str, build: object, *args: object, offset: int = 0) -> int:
        payload = self.call(label, build, *args)
        return fr.parse_open(payload, offset)[0] if self.results[label] == 0 else 0


def exercise(fe: VhostUserFrontend, share: Path) -> dict[str, int]:
    """Run every operation once or more; the errno of each (0: it worked), by label.

    ``share`` gets a host file with an xattr and a setuid bit first, as a guest would find it.
    """
    host = share / "host.bin"
    host.write_bytes(os.urandom(65536))
    os.chmod(host, 0o4755)
    os.setxattr(host, "user.host", b"from the host")
    s = _Session(fe)
    fe.start()
    s.call("init", lambda u: fr.init_request(u))
    hostino = s.entry("lookup", fr.lookup, ROOT, "host.bin")
    s.entry("lookup_missing", fr.lookup, ROOT, "missing")
    s.call("getattr", fr.getattr, hostino)
    s.call("statx", _statx, hostino, None)
    s.call("statfs", fr.statfs)
    s.call("access", fr.access, hostino, os.R_OK)
    s.call("getxattr", fr.getxattr, hostino, "user.host", 256)
    s.call("listxattr", fr.listxattr, hostino, 4096)
    s.call("setxattr", fr.setxattr, hostino, "user.guest", b"v")
    s.call("removexattr", fr.removexattr, hostino, "user.guest")
    # Data, through an open file.
    fh = s.fh("open_rdwr", fr.open_, hostino, os.O_RDWR)
    s.call("read", fr.read, hostino, fh, 0, 4096)
    s.call("write", fr.write, hostino, fh, 0, b"x" * 4096)
    s.call("write_kill_suidgid", _write_killing, hostino, fh, 8192, b"y" * 100)
    s.call("getattr_fh", fr.getattr, hostino, fh)
    s.call("statx_fh", _statx, hostino, fh)
    s.call("lseek_data", fr.lseek, hostino, fh, 0, os.SEEK_DATA)
    s.call("lseek_hole", fr.lseek, hostino, fh, 0, os.SEEK_HOLE)
    s.call("fallocate", fr.fallocate, hostino, fh, 65536, 4096)
    punch = 0x01 | 0x02  # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
    s.call("fallocate_punch", fr.fallocate, hostino, fh, 0, 4096, punch)
    s.call("fsync", fr.fsync, hostino, fh)
    s.call("fdatasync", fr.fsync, hostino, fh, True)
    s.call("setattr_fh_size", fr.setattr, hostino, size=32768, fh=fh)
    s.call("setattr_fh_mode", fr.setattr, hostino, mode=0o644, fh=fh)
    s.call("setattr_fh_owner", fr.setattr, hostino, uid=1000, gid=1000, fh=fh)
    s.call("setattr_fh_times", fr.setattr, hostino, atime_ns=10**18, mtime_ns=10**18, fh=fh)
    s.call("setattr_fh_kill", _setattr_killing, hostino, fh)
    s.call("getlk", fr.getlk, hostino, fh, 1, fcntl.F_WRLCK)
    s.call("setlk", fr.setlk, hostino, fh, 1, fcntl.F_WRLCK, 0, 10)
    s.call("setlkw", fr.setlkw, hostino, fh, 1, fcntl.F_UNLCK, 0, 10)
    s.call("flock", fr.setlk, hostino, fh, 2, fcntl.F_WRLCK, flock=True)
    s.call("flock_unlock", fr.setlk, hostino, fh, 2, fcntl.F_UNLCK, flock=True)
    # By inode (no open file).
    s.call("setattr_size", fr.setattr, hostino, size=16384)
    s.call("setattr_mode", fr.setattr, hostino, mode=0o4755)
    s.call("setattr_owner", fr.setattr, hostino, uid=0, gid=0)
    s.call("setattr_times", fr.setattr, hostino, atime_ns=2 * 10**18, mtime_ns=2 * 10**18)
    s.call("setattr_now", fr.setattr, hostino, atime_now=True, mtime_now=True)
    s.call("setattr_kill", _setattr_killing, hostino, None)
    # Creating things.
    d = s.entry("mkdir", fr.mkdir, ROOT, "d")
    created = s.call("create", fr.create, d, "new.txt", os.O_RDWR | os.O_CREAT)
    new, newfh = 0, 0
    if s.results["create"] == 0:
        new = fr.parse_entry(created).nodeid
        newfh = fr.parse_open(created, abi.ENTRY_OUT.size)[0]
    s.call("write_new", fr.write, new, newfh, 0, b"abc" * 1000)
    s.call("copy_file_range", fr.copy_file_range, hostino, fh, 0, new, newfh, 4096, 4096)
    s.call("flush", fr.flush, new, newfh)
    s.call("release", fr.release, new, newfh)
    s.call("open_kill_suidgid", _open_killing, hostino)
    s.entry("symlink", fr.symlink, d, "link", "new.txt")
    linkino = s.entry("lookup_link", fr.lookup, d, "link")
    s.call("readlink", fr.readlink, linkino)
    s.entry("link", fr.link, new, d, "hard.txt")
    s.entry("mknod_fifo", fr.mknod, d, "fifo", 0o10644)
    s.entry("mknod_socket", fr.mknod, d, "sock", 0o140644)
    s.entry("mknod_file", fr.mknod, d, "plain", 0o100644)
    s.call("rename", fr.rename, d, "plain", ROOT, "moved")
    s.call("rename_noreplace", fr.rename2, ROOT, "moved", d, "hard.txt", abi.RENAME_NOREPLACE)
    s.call("rename_exchange", fr.rename2, ROOT, "moved", d, "hard.txt", abi.RENAME_EXCHANGE)
    dfh = s.fh("opendir", fr.opendir, d)
    s.call("readdir", fr.readdir, d, dfh)
    s.call("readdirplus", fr.readdirplus, d, dfh)
    s.call("fsyncdir", fr.fsyncdir, d, dfh)
    s.call("releasedir", fr.releasedir, d, dfh)
    s.call("syncfs", fr.syncfs)
    # Removing them.
    for name in ("link", "hard.txt", "fifo", "sock", "new.txt"):
        s.call(f"unlink_{name}", fr.unlink, d, name)
    s.call("unlink_moved", fr.unlink, ROOT, "moved")
    s.call("rmdir", fr.rmdir, ROOT, "d")
    s.call("release_host", fr.release, hostino, fh)
    s.forget("forget", fr.forget, linkino, 1)
    s.forget("destroy", lambda u: fr.destroy(u))
    return s.results


def _statx(unique: int, nodeid: int, fh: int | None) -> bytes:
    flags = abi.GETATTR_FH if fh is not None else 0
    mask = abi.STATX_BASIC_STATS | abi.STATX_BTIME
    return fr.request(Opcode.STATX, unique, nodeid, abi.STATX_IN.pack(flags, 0, fh or 0, 0, mask))


def _write_killing(unique: int, nodeid: int, fh: int, offset: int, data: bytes) -> bytes:
    body = abi.READ_IN.pack(fh, offset, len(data), abi.WRITE_KILL_SUIDGID, 0, 0, 0)
    return fr.request(Opcode.WRITE, unique, nodeid, body + data)


def _setattr_killing(unique: int, nodeid: int, fh: int | None) -> bytes:
    """SETATTR of the mode (unchanged set-id bits) with FATTR_KILL_SUIDGID."""
    data = bytearray(fr.setattr(unique, nodeid, mode=0o6755, fh=fh))
    valid = int.from_bytes(data[abi.IN_HEADER.size : abi.IN_HEADER.size + 4], "little")
    valid |= abi.FATTR_KILL_SUIDGID
    data[abi.IN_HEADER.size : abi.IN_HEADER.size + 4] = valid.to_bytes(4, "little")
    return bytes(data)


def _open_killing(unique: int, nodeid: int) -> bytes:
    body = abi.OPEN_IN.pack(os.O_RDWR | os.O_TRUNC, abi.OPEN_KILL_SUIDGID)
    return fr.request(Opcode.OPEN, unique, nodeid, body)
