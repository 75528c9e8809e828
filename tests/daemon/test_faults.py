"""Faults a running ``fsd serve`` must survive, driven by the scripted front-end, each with the
outcome docs/security.md ("Faults") promises, and after each a count of what the daemon holds:
its fds and guest-memory mappings back to where they were, its resident memory bounded.

The VMM goes away in the middle of large writes, or while the guest holds open files and
locks (a lock request waiting, too); a VMM reconnects (``reconnect``); the shared directory is
removed, renamed or made read-only under the daemon; the backing filesystem is full; the
daemon runs out of fds; SIGTERM arrives while the guest writes. What a real guest sees of
some of these: tests/guest/test_faults.py.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import resource
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsd.fuse.abi import ROOT_ID
from fsd.testing import fuse_requests as fr
from fsd.testing.frontend import VhostUserFrontend
from fsd.testing.fuse_requests import FuseClient
from fsd.testing.serve import ServeProcess
from tests.daemon.faults import btrfs_with_quota, connect, usage, wait_for_usage, write_request

MIB = 1 << 20
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a filesystem: needs root")


@contextlib.contextmanager
def serving(
    shared_dir: Path, socket_path: Path, *, reconnect: bool = False, pool: int = 0
) -> Iterator[ServeProcess]:
    """``fsd serve`` (``--reconnect``, ``--thread-pool-size`` as asked)."""
    extra = ["--log-level", "info"] + (["--thread-pool-size", str(pool)] if pool else [])
    extra += ["--reconnect"] if reconnect else []
    daemon = ServeProcess(shared_dir, socket_path, *extra)
    try:
        yield daemon
    finally:
        if daemon.proc.poll() is None:
            daemon.stop(signal.SIGKILL)


def exited_cleanly(daemon: ServeProcess) -> str:
    """Wait for the daemon to exit by itself; assert status 0 and no traceback; its log."""
    status, log = daemon.stop(None)
    assert status == 0, log
    assert "Traceback" not in log, log
    assert not daemon.socket_path.exists()
    return log


@contextlib.contextmanager
def mounted(target: Path, *args: str) -> Iterator[Path]:
    """``mount ARGS... target`` for the test's duration (lazily unmounted)."""
    subprocess.run(["mount", *args, str(target)], check=True, capture_output=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)


def large_writes_in_flight(
    frontend: VhostUserFrontend, client: FuseClient, name: str, count: int = 8
) -> bytes:
    """Create ``name`` and queue ``count`` 1 MiB WRITEs to it in one kick, without waiting for
    their replies; returns the bytes they write, in order."""
    entry, fh = client.create(ROOT_ID, name)
    queue = frontend.queues[1]
    data = b""
    for index in range(count):
        chunk = bytes([index + 1]) * MIB
        queue.add_request(write_request(client, entry.nodeid, fh, index * MIB, chunk), 4096)
        data += chunk
    frontend.kick(1)
    return data


def assert_written_prefix(path: Path, data: bytes) -> None:
    """What reached ``path`` is a prefix of ``data``, in whole pages (no torn garbage)."""
    got = path.read_bytes()
    assert got == data[: len(got)]


def hold_open_files_and_locks(client: FuseClient, frontend: VhostUserFrontend, share: Path) -> int:
    """A guest holding a POSIX lock, a flock and open files, with a SETLKW waiting for a lock
    a host process holds on ``share/busy``; returns the host process's fd (close to free)."""
    entry, fh = client.create(ROOT_ID, "locked")
    client.ok(fr.setlk(client.next_unique(), entry.nodeid, fh, 7, fcntl.F_WRLCK, pid=70))
    fh2 = client.open(entry.nodeid, os.O_RDWR)
    client.ok(fr.setlk(client.next_unique(), entry.nodeid, fh2, 8, fcntl.F_WRLCK, flock=True))
    busy = share / "busy"
    busy.touch()
    host_fd = os.open(busy, os.O_RDWR)
    fcntl.lockf(host_fd, fcntl.LOCK_EX)
    waiter = client.lookup(ROOT_ID, "busy")
    wfh = client.open(waiter.nodeid, os.O_RDWR)
    req = fr.setlkw(client.next_unique(), waiter.nodeid, wfh, 9, fcntl.F_WRLCK, pid=90)
    frontend.queues[1].add_request(req, 4096)  # answered only when the host lets go
    frontend.kick(1)
    return host_fd


def assert_locks_free(path: Path) -> None:
    """A host process gets both kinds of lock on ``path`` at once (nobody holds them)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


# --- the VMM goes away -----------------------------------------------------------------------


def test_disconnect_during_large_writes_exits_cleanly(shared_dir: Path, socket_path: Path) -> None:
    with serving(shared_dir, socket_path) as daemon:
        frontend, client = connect(socket_path)
        data = large_writes_in_flight(frontend, client, "big")
        frontend.close()  # the VMM dies: socket, memory and eventfds gone at once
        log = exited_cleanly(daemon)
    assert "front-end disconnected" in log
    assert_written_prefix(shared_dir / "big", data)


def test_disconnect_with_open_files_and_locks_exits_cleanly(
    shared_dir: Path, socket_path: Path
) -> None:
    with serving(shared_dir, socket_path) as daemon:
        frontend, client = connect(socket_path)
        host_fd = hold_open_files_and_locks(client, frontend, shared_dir)
        try:
            frontend.close()
            exited_cleanly(daemon)
        finally:
            os.close(host_fd)
    assert_locks_free(shared_dir / "locked")


def test_without_reconnect_a_restarted_vmm_finds_no_socket(
    shared_dir: Path, socket_path: Path
) -> None:
    """The default, as virtiofsd's: one front-end per daemon; whoever restarts the VMM
    restarts fsd too."""
    with serving(shared_dir, socket_path) as daemon:
        frontend, _ = connect(socket_path)
        frontend.close()
        exited_cleanly(daemon)
    with socket.socket(socket.AF_UNIX) as sock, pytest.raises(FileNotFoundError):
        sock.connect(str(socket_path))


@pytest.mark.parametrize("pool", [0, 2], ids=["inline", "thread-pool"])
def test_reconnect_serves_each_vmm_from_a_clean_state_and_leaks_nothing(
    shared_dir: Path, socket_path: Path, pool: int
) -> None:
    """Front-ends come and go, cleanly or dying mid-write or holding locks; after each the
    daemon holds exactly the fds it held before the first one came, no guest memory, and
    its resident memory does not grow with the number of front-ends."""
    with serving(shared_dir, socket_path, reconnect=True, pool=pool) as daemon:
        pid = daemon.server_pid
        idle = usage(pid)

        frontend, client = connect(socket_path)
        entry, fh = client.create(ROOT_ID, "warm")
        client.write(entry.nodeid, fh, 0, b"w" * MIB)
        assert client.read(entry.nodeid, fh, 0, MIB) == b"w" * MIB
        old_nodeid = entry.nodeid
        frontend.stop()
        frontend.close()
        after_first = wait_for_usage(pid, idle.fds)
        assert (after_first.fds, after_first.guest_mappings) == (idle.fds, 0)

        for round_ in range(12):
            frontend, client = connect(socket_path)
            # A new guest: nothing of the last one's session is known.
            assert client.errno_of(fr.getattr(client.next_unique(), old_nodeid)) != 0
            match round_ % 3:
                case 0:
                    data = large_writes_in_flight(frontend, client, f"big{round_}")
                    frontend.close()
                    wait_for_usage(pid, idle.fds)
                    assert_written_prefix(shared_dir / f"big{round_}", data)
                case 1:
                    host_fd = hold_open_files_and_locks(client, frontend, shared_dir)
                    frontend.close()
                    try:
                        wait_for_usage(pid, idle.fds)
                        assert_locks_free(shared_dir / "locked")  # released at the disconnect
                    finally:
                        os.close(host_fd)
                    (shared_dir / "locked").unlink()
                case _:
                    entry, fh = client.create(ROOT_ID, f"clean{round_}")
                    client.write(entry.nodeid, fh, 0, b"c" * 4096)
                    frontend.stop()
                    frontend.close()
            now = wait_for_usage(pid, idle.fds)
            assert (now.fds, now.guest_mappings) == (idle.fds, 0), f"round {round_}: {now}"
        # 12 front-ends, 32 MiB written mid-disconnect: a leak per front-end would show.
        assert now.rss_kib - after_first.rss_kib < 8 * 1024, (after_first, now)
        status, log = daemon.stop(signal.SIGTERM)
    assert status == 0 and "Traceback" not in log, log
    assert log.count("waiting for the front-end to reconnect") == 13


# --- the shared directory changes under the daemon ---------------------------------------------


def test_shared_directory_removed(shared_dir: Path, socket_path: Path) -> None:
    """fsd holds the directory open: a removed share is an empty, deleted directory to the
    guest (ENOENT for new names), open files stay readable, and the daemon goes on."""
    (shared_dir / "f").write_bytes(b"still readable")
    with serving(shared_dir, socket_path) as daemon:
        frontend, client = connect(socket_path)
        f = client.lookup(ROOT_ID, "f")
        fh = client.open(f.nodeid)
        before = usage(daemon.server_pid)
        shutil.rmtree(shared_dir)
        assert client.read(f.nodeid, fh, 0, 100) == b"still readable"
        assert client.errno_of(fr.lookup(client.next_unique(), ROOT_ID, "f")) == errno.ENOENT
        assert client.errno_of(fr.create(client.next_unique(), ROOT_ID, "new")) == errno.ENOENT
        assert client.errno_of(fr.mkdir(client.next_unique(), ROOT_ID, "d")) == errno.ENOENT
        assert client.getattr(ROOT_ID).nlink == 0
        assert {d.name for d in client.listdir(ROOT_ID)} <= {b".", b".."}
        assert client.errno_of(fr.statfs(client.next_unique())) == 0
        assert usage(daemon.server_pid).fds == before.fds
        frontend.close()
        exited_cleanly(daemon)
    assert not shared_dir.exists()


def test_shared_directory_renamed(shared_dir: Path, socket_path: Path) -> None:
    """fsd serves the directory it opened, wherever it moves: new files land at its new
    name, and the old path is never used again (a new directory there stays unseen)."""
    (shared_dir / "f").write_text("kept")
    moved = shared_dir.with_name("moved")
    with serving(shared_dir, socket_path) as daemon:
        frontend, client = connect(socket_path)
        client.lookup(ROOT_ID, "f")
        shared_dir.rename(moved)
        shared_dir.mkdir()
        (shared_dir / "impostor").write_text("not the share")
        assert client.errno_of(fr.lookup(client.next_unique(), ROOT_ID, "impostor")) == (
            errno.ENOENT
        )
        g, fh = client.create(ROOT_ID, "g")
        client.write(g.nodeid, fh, 0, b"new")
        names = {d.name for d in client.listdir(ROOT_ID)} - {b".", b".."}
        assert names == {b"f", b"g"}
        frontend.close()
        exited_cleanly(daemon)
    assert (moved / "g").read_bytes() == b"new"
    assert sorted(os.listdir(shared_dir)) == ["impostor"]


@needs_root
def test_shared_filesystem_remounted_read_only(shared_dir: Path, socket_path: Path) -> None:
    """A read-only remount of the share's filesystem: the kernel refuses it (EBUSY) while the
    guest holds a file open for writing; once done, changes fail with EROFS, reads go on, and
    after a read-write remount changes work again."""
    remount = ["mount", "-o", "remount,ro", str(shared_dir)]
    with mounted(shared_dir, "-t", "tmpfs", "-o", "size=4m", "fsd-test"):
        (shared_dir / "f").write_text("data")
        with serving(shared_dir, socket_path) as daemon:
            frontend, client = connect(socket_path)
            f = client.lookup(ROOT_ID, "f")
            wfh = client.open(f.nodeid, os.O_RDWR)
            assert subprocess.run(remount, capture_output=True).returncode != 0
            client.ok(fr.release(client.next_unique(), f.nodeid, wfh))
            fh = client.open(f.nodeid)
            subprocess.run(remount, check=True)
            before = usage(daemon.server_pid)
            assert client.errno_of(fr.create(client.next_unique(), ROOT_ID, "new")) == errno.EROFS
            assert client.errno_of(fr.mkdir(client.next_unique(), ROOT_ID, "d")) == errno.EROFS
            assert client.errno_of(fr.unlink(client.next_unique(), ROOT_ID, "f")) == errno.EROFS
            assert client.errno_of(fr.open_(client.next_unique(), f.nodeid, os.O_RDWR)) == (
                errno.EROFS
            )
            assert client.errno_of(fr.setattr(client.next_unique(), f.nodeid, mode=0o600)) == (
                errno.EROFS
            )
            assert client.read(f.nodeid, fh, 0, 10) == b"data"
            assert usage(daemon.server_pid).fds == before.fds
            subprocess.run(["mount", "-o", "remount,rw", str(shared_dir)], check=True)
            wfh = client.open(f.nodeid, os.O_RDWR)
            client.write(f.nodeid, wfh, 0, b"DATA")
            frontend.close()
            exited_cleanly(daemon)
        assert (shared_dir / "f").read_text() == "DATA"


@needs_root
def test_read_only_bind_mount_over_a_served_share_changes_nothing(
    shared_dir: Path, socket_path: Path
) -> None:
    """A read-only bind mount placed over the share after start-up is another mount: the
    daemon holds the directory through the mount it opened, and goes on writing. (Restart
    it, or remount the filesystem itself, to make a served share read-only.)"""
    with serving(shared_dir, socket_path) as daemon:
        frontend, client = connect(socket_path)
        with mounted(shared_dir, "--bind", str(shared_dir)):
            subprocess.run(
                ["mount", "-o", "remount,bind,ro", str(shared_dir)], check=True, capture_output=True
            )
            with pytest.raises(OSError, match="Read-only"):
                (shared_dir / "host").touch()
            client.create(ROOT_ID, "still-writable")
            frontend.close()
            exited_cleanly(daemon)
        assert (shared_dir / "still-writable").exists()


# --- the backing filesystem is full ------------------------------------------------------------


@needs_root
def test_enospc_reaches_the_guest_and_the_daemon_goes_on(
    shared_dir: Path, socket_path: Path
) -> None:
    with (
        mounted(shared_dir, "-t", "tmpfs", "-o", "size=1m,nr_inodes=16", "fsd-test"),
        serving(shared_dir, socket_path) as daemon,
    ):
        frontend, client = connect(socket_path)
        entry, fh = client.create(ROOT_ID, "fill")
        before = usage(daemon.server_pid)
        assert client.write(entry.nodeid, fh, 0, b"x" * (MIB // 2)) == MIB // 2
        req = write_request(client, entry.nodeid, fh, MIB // 2, b"y" * MIB)
        reply = fr.parse_reply(client.call(req))
        # A write that fits in part is short (the guest retries the rest and gets ENOSPC).
        if reply.error == 0:
            assert fr.parse_write(reply.payload) < MIB
            req = write_request(client, entry.nodeid, fh, MIB, b"z" * 4096)
            assert client.errno_of(req) == errno.ENOSPC
        else:
            assert -reply.error == errno.ENOSPC
        created = []
        for index in range(32):  # until the inodes run out
            error = client.errno_of(fr.mknod(client.next_unique(), ROOT_ID, f"n{index}", 0o100600))
            if error:
                assert error == errno.ENOSPC
                break
            created.append(index)
        assert len(created) < 32
        # Room again: the daemon goes on as before.
        client.ok(fr.setattr(client.next_unique(), entry.nodeid, size=0))
        assert client.write(entry.nodeid, fh, 0, b"ok") == 2
        assert usage(daemon.server_pid).fds <= before.fds + len(created)
        frontend.close()
        exited_cleanly(daemon)


@needs_root
def test_edquot_reaches_the_guest(shared_dir: Path, socket_path: Path, tmp_path: Path) -> None:
    """A btrfs quota group limit (this host kernel has no tmpfs or ext4 quotas): EDQUOT,
    which root does not bypass there, unlike user quotas (CAP_SYS_RESOURCE)."""
    why_not = btrfs_with_quota(tmp_path / "btrfs.img", shared_dir)
    if why_not is not None:
        pytest.skip(why_not)
    try:
        with serving(shared_dir, socket_path) as daemon:
            frontend, client = connect(socket_path)
            entry, fh = client.create(ROOT_ID, "fill")
            error = 0
            for index in range(8):
                req = write_request(client, entry.nodeid, fh, index * MIB, b"q" * MIB)
                error = client.errno_of(req)
                if not error:
                    client.ok(fr.fsync(client.next_unique(), entry.nodeid, fh))
                    continue
                break
            assert error == errno.EDQUOT
            frontend.close()
            exited_cleanly(daemon)
    finally:
        subprocess.run(["umount", "-l", str(shared_dir)], check=False)


# --- the daemon runs out of fds ----------------------------------------------------------------


def test_open_files_limit_exhausted_answers_emfile(shared_dir: Path, socket_path: Path) -> None:
    """With RLIMIT_NOFILE at the fds it holds plus a few, LOOKUP, CREATE and OPEN answer
    EMFILE; forgetting and closing makes room again; nothing is lost and nothing leaks."""
    for index in range(40):
        (shared_dir / f"f{index}").write_text(str(index))
    with serving(shared_dir, socket_path, reconnect=True) as daemon:
        pid = daemon.server_pid
        idle = usage(pid)
        frontend, client = connect(socket_path)
        serving_fds = usage(pid).fds
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (serving_fds + 8, serving_fds + 8))
        found: list[int] = []
        errors = set()
        for index in range(40):
            error = client.errno_of(fr.lookup(client.next_unique(), ROOT_ID, f"f{index}"))
            if error:
                errors.add(error)
            else:
                found.append(client.lookup(ROOT_ID, f"f{index}").nodeid)
        assert errors == {errno.EMFILE} and 0 < len(found) < 40
        assert client.errno_of(fr.create(client.next_unique(), ROOT_ID, "new")) == errno.EMFILE
        for nodeid in found:
            client.call(fr.forget(client.next_unique(), nodeid, 2))
        # Room again: every file is there, each opened and read in turn.
        for index in range(40):
            f = client.lookup(ROOT_ID, f"f{index}")
            fh = client.open(f.nodeid)
            assert client.read(f.nodeid, fh, 0, 10) == str(index).encode()
            client.ok(fr.release(client.next_unique(), f.nodeid, fh))
            client.call(fr.forget(client.next_unique(), f.nodeid, 1))
        frontend.close()
        assert wait_for_usage(pid, idle.fds).fds == idle.fds
        # The limit stays low: a new front-end still connects (its eventfds fit).
        frontend, client = connect(socket_path)
        assert client.lookup(ROOT_ID, "f1").attr.size == 1
        frontend.close()
        status, log = daemon.stop(signal.SIGTERM)
    assert status == 0 and "Traceback" not in log, log


# --- SIGTERM while the guest writes ------------------------------------------------------------


def test_sigterm_while_writing_keeps_every_acknowledged_fsync(
    shared_dir: Path, socket_path: Path
) -> None:
    """The guest writes and fsyncs file after file; SIGTERM arrives in the middle. The daemon
    exits 0, and every file whose FSYNC was answered is complete on the host."""
    with serving(shared_dir, socket_path) as daemon:
        frontend, client = connect(socket_path)
        synced: list[int] = []
        stop = threading.Event()

        def writer() -> None:
            with contextlib.suppress(OSError, TimeoutError, ConnectionError, AssertionError):
                for index in range(10_000):
                    entry, fh = client.create(ROOT_ID, f"file{index}")
                    client.write(entry.nodeid, fh, 0, bytes([index % 251]) * 65536)
                    client.ok(fr.fsync(client.next_unique(), entry.nodeid, fh))
                    synced.append(index)
                    if stop.is_set():
                        return

        frontend.sock.settimeout(5)
        thread = threading.Thread(target=writer)
        thread.start()
        while len(synced) < 5:
            assert thread.is_alive()
            threading.Event().wait(0.01)
        daemon.proc.send_signal(signal.SIGTERM)
        status, log = daemon.stop(None)
        stop.set()
        thread.join(30)
        frontend.close()
    assert status == 0 and "SIGTERM: shutting down" in log and "Traceback" not in log, log
    assert synced
    for index in synced:
        assert (shared_dir / f"file{index}").read_bytes() == bytes([index % 251]) * 65536
