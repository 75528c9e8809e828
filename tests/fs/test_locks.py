"""GETLK/SETLK/SETLKW and flock through the FUSE server: real host locks, real conflicts."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fsd.fuse.abi import OFFSET_MAX, ROOT_ID
from fsd.testing import fuse_requests as fr
from fsd.testing.fuse_requests import FuseClient

A, B = 0xA000, 0xB000  # two guest lock owners (their files_struct ids)
WR, RD, UN = fcntl.F_WRLCK, fcntl.F_RDLCK, fcntl.F_UNLCK


def _file(client: FuseClient, name: str = "f") -> tuple[int, int]:
    entry, fh = client.create(ROOT_ID, name)
    client.write(entry.nodeid, fh, 0, b"x" * 4096)
    return entry.nodeid, fh


def _setlk(client: FuseClient, node: int, fh: int, owner: int, kind: int, *rng: int,
           pid: int = 0, flock: bool = False) -> int:  # fmt: skip
    return client.errno_of(
        fr.setlk(client.next_unique(), node, fh, owner, kind, *rng, pid=pid, flock=flock)
    )


def _getlk(client: FuseClient, node: int, fh: int, owner: int, kind: int, *rng: int) -> tuple[
    int, int, int, int
]:  # fmt: skip
    return fr.parse_lk(client.ok(fr.getlk(client.next_unique(), node, fh, owner, kind, *rng)))


def _wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_owners_conflict_and_getlk_names_the_guest_pid(client: FuseClient) -> None:
    node, fh = _file(client)
    assert _setlk(client, node, fh, A, WR, 0, 99, pid=111) == 0
    assert _setlk(client, node, fh, B, WR, 50, 60, pid=222) == errno.EAGAIN
    assert _setlk(client, node, fh, B, RD, 100, OFFSET_MAX, pid=222) == 0
    assert _getlk(client, node, fh, B, WR, 0, 10) == (0, 99, WR, 111)
    assert _getlk(client, node, fh, A, WR, 0, 99)[2] == UN  # its own lock never conflicts
    assert _getlk(client, node, fh, A, WR, 200, 300) == (100, OFFSET_MAX, RD, 222)


def test_one_owner_splits_its_lock(client: FuseClient) -> None:
    node, fh = _file(client)
    assert _setlk(client, node, fh, A, WR, 0, 99) == 0
    assert _setlk(client, node, fh, A, UN, 10, 19) == 0
    assert _setlk(client, node, fh, B, WR, 10, 19) == 0
    assert _setlk(client, node, fh, B, WR, 5, 5) == errno.EAGAIN
    assert _setlk(client, node, fh, A, RD, 0, 9) == 0  # downgrade in place


def test_flush_drops_the_owners_locks(client: FuseClient) -> None:
    node, fh = _file(client)
    fh2 = client.open(node, os.O_RDWR)
    assert _setlk(client, node, fh, A, WR) == 0
    assert _setlk(client, node, fh2, B, WR) == errno.EAGAIN
    client.ok(fr.flush(client.next_unique(), node, fh2, lock_owner=B))  # not A: nothing
    assert _setlk(client, node, fh2, B, WR) == errno.EAGAIN
    client.ok(fr.flush(client.next_unique(), node, fh, lock_owner=A))
    assert _setlk(client, node, fh2, B, WR) == 0


def test_last_release_drops_every_lock(client: FuseClient) -> None:
    node, fh = _file(client)
    assert _setlk(client, node, fh, A, WR) == 0
    client.ok(fr.release(client.next_unique(), node, fh))
    fh2 = client.open(node, os.O_RDWR)
    assert _setlk(client, node, fh2, B, WR) == 0


def test_host_locks_conflict_both_ways(client: FuseClient, share: Path) -> None:
    node, fh = _file(client)
    with open(share / "f", "r+b") as host:
        fcntl.lockf(host, fcntl.LOCK_EX, 10, 0)  # bytes 0..9, a classic POSIX lock
        assert _setlk(client, node, fh, A, WR, 5, 5) == errno.EAGAIN
        assert _getlk(client, node, fh, A, RD, 0, 100) == (0, 9, WR, 0)  # host pid: not shown
        assert _setlk(client, node, fh, A, WR, 10, 20) == 0
        with pytest.raises((BlockingIOError, PermissionError)):  # EAGAIN or EACCES
            fcntl.lockf(host, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 15)


def test_setlkw_waits_then_completes(client: FuseClient) -> None:
    node, fh = _file(client)
    assert _setlk(client, node, fh, A, WR) == 0
    waiting = client.submit(fr.setlkw(client.next_unique(), node, fh, B, WR, 0, 0, pid=7))
    time.sleep(0.05)
    assert not waiting.done
    assert client.getattr(node).size == 4096  # the server keeps answering meanwhile
    assert _setlk(client, node, fh, A, UN) == 0
    assert fr.parse_reply(waiting.wait()).error == 0
    assert _setlk(client, node, fh, A, WR, 0, 0) == errno.EAGAIN
    assert _getlk(client, node, fh, A, WR, 0, 0)[3] == 7


def test_setlkw_interrupted(client: FuseClient) -> None:
    node, fh = _file(client)
    assert _setlk(client, node, fh, A, WR) == 0
    unique = client.next_unique()
    waiting = client.submit(fr.setlkw(unique, node, fh, B, WR))
    assert client.call(fr.interrupt(client.next_unique(), unique)) == b""
    reply = fr.parse_reply(waiting.wait())
    assert (reply.unique, reply.error) == (unique, -errno.EINTR)
    client.call(fr.interrupt(client.next_unique(), unique))  # already answered: ignored
    assert _setlk(client, node, fh, A, UN) == 0
    assert _setlk(client, node, fh, B, WR) == 0  # the interrupted wait took nothing


def test_destroy_ends_every_wait(client: FuseClient) -> None:
    node, fh = _file(client)
    assert _setlk(client, node, fh, A, WR) == 0
    waiting = client.submit(fr.setlkw(client.next_unique(), node, fh, B, WR))
    client.call(fr.destroy(client.next_unique()))
    assert fr.parse_reply(waiting.wait()).error == -errno.EINTR


def test_flock_belongs_to_the_open_file(client: FuseClient, share: Path) -> None:
    node, fh = _file(client)
    fh2 = client.open(node, os.O_RDONLY)
    assert _setlk(client, node, fh, A, WR, flock=True) == 0
    assert _setlk(client, node, fh, B, WR, flock=True) == 0  # same file: any owner
    assert _setlk(client, node, fh2, A, RD, flock=True) == errno.EAGAIN
    with open(share / "f", "rb") as host:
        with pytest.raises(BlockingIOError):
            fcntl.flock(host, fcntl.LOCK_SH | fcntl.LOCK_NB)
        assert _setlk(client, node, fh2, A, RD) == 0  # POSIX and BSD locks are independent
        waiting = client.submit(fr.setlkw(client.next_unique(), node, fh2, A, RD, flock=True))
        time.sleep(0.03)
        assert not waiting.done
        client.ok(fr.release(client.next_unique(), node, fh, 2, A))  # RELEASE_FLOCK_UNLOCK
        assert fr.parse_reply(waiting.wait()).error == 0
        fcntl.flock(host, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared with the guest's


@pytest.mark.parametrize(("kind", "start", "end"), [(7, 0, 1), (WR, 10, 5), (WR, 0, 1 << 63)])
def test_bad_locks_are_einval(client: FuseClient, kind: int, start: int, end: int) -> None:
    node, fh = _file(client)
    assert _setlk(client, node, fh, A, kind, start, end) == errno.EINVAL
    getlk = fr.getlk(client.next_unique(), node, fh, A, kind, start, end)
    assert client.errno_of(getlk) == errno.EINVAL


def test_unknown_handle_is_ebadf(client: FuseClient) -> None:
    assert _setlk(client, ROOT_ID, 999, A, WR) == errno.EBADF
    assert client.errno_of(fr.setlkw(client.next_unique(), ROOT_ID, 999, A, WR)) == errno.EBADF


def test_many_waiters_are_served_in_turn(client: FuseClient) -> None:
    node, fh = _file(client)
    assert _setlk(client, node, fh, A, WR) == 0
    owners = [0x100 + i for i in range(5)]
    subs = [client.submit(fr.setlkw(client.next_unique(), node, fh, o, WR)) for o in owners]
    assert _setlk(client, node, fh, A, UN) == 0
    for _ in owners:
        _wait_until(lambda: sum(s.done for s in subs) >= 1)
        done = [i for i, s in enumerate(subs) if s.done]
        assert len(done) == 1
        i = done[0]
        assert fr.parse_reply(subs[i].wait()).error == 0
        subs.pop(i)
        owner = owners.pop(i)
        assert _setlk(client, node, fh, owner, UN) == 0


def test_interrupt_before_its_setlkw_still_interrupts(client: FuseClient) -> None:
    """On vhost-user the hiprio queue may serve the INTERRUPT first."""
    node, fh = _file(client)
    assert _setlk(client, node, fh, A, WR) == 0
    unique = client.next_unique()
    client.call(fr.interrupt(client.next_unique(), unique))
    assert client.errno_of(fr.setlkw(unique, node, fh, B, WR)) == errno.EINTR
