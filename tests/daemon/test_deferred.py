"""Deferred replies over vhost-user: a SETLKW keeps its chain while the queue goes on.

A real ``fsd serve`` process and the scripted front-end: the waiting request's chain is
returned only when the lock is granted (or the wait is interrupted from the hiprio queue),
and requests behind it on the same queue are answered meanwhile.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

import pytest

from fsd.fuse.abi import ATTR_OUT, ENTRY_OUT, OPEN_OUT, OUT_HEADER, ROOT_ID
from fsd.testing import fuse_requests as fr
from fsd.testing.frontend import VhostUserFrontend

A, B = 0xA, 0xB
WR, UN = fcntl.F_WRLCK, fcntl.F_UNLCK


def _answer(fe: VhostUserFrontend, data: bytes) -> tuple[int, bytes]:
    out = fe.request(data)
    _, error, _ = OUT_HEADER.unpack_from(out)
    return -error, out[OUT_HEADER.size :]


def _setup(fe: VhostUserFrontend) -> tuple[int, int]:
    """INIT (locks granted) and CREATE a file; returns (nodeid, fh)."""
    fe.start()
    error, out = _answer(fe, fr.init_request(2))
    assert error == 0
    assert fr.parse_init(out).flags & 0x402 == 0x402  # POSIX_LOCKS | FLOCK_LOCKS
    error, out = _answer(fe, fr.create(4, ROOT_ID, "locked", os.O_RDWR | os.O_CREAT, 0o644))
    assert error == 0
    return ENTRY_OUT.unpack_from(out)[0], OPEN_OUT.unpack_from(out, ENTRY_OUT.size)[0]


def _submit(fe: VhostUserFrontend, data: bytes, queue: int = 1) -> int:
    head = fe.queues[queue].add_request(data, 4096, indirect=True)
    fe.kick(queue)
    return head


def test_setlkw_waits_while_the_queue_goes_on(frontend: VhostUserFrontend) -> None:
    node, fh = _setup(frontend)
    assert _answer(frontend, fr.setlk(10, node, fh, A, WR))[0] == 0
    waiting = _submit(frontend, fr.setlkw(12, node, fh, B, WR, pid=5))
    q = frontend.queues[1]
    # Requests behind it on the same queue are answered; the SETLKW chain is not returned.
    getattr_head = _submit(frontend, fr.getattr(14, node))
    [(head, length)] = frontend.wait_used(1)
    assert head == getattr_head
    assert ATTR_OUT.unpack_from(q.written(head, length), OUT_HEADER.size)
    time.sleep(0.2)
    assert q.take_used() == []
    # The holder lets go: the waiting chain comes back too, granted.
    unlock = _submit(frontend, fr.setlk(16, node, fh, A, UN))
    used = dict(frontend.wait_used(1, 2))
    assert sorted(used) == sorted([unlock, waiting])
    assert fr.parse_reply(q.written(unlock, used[unlock])).error == 0
    assert fr.parse_reply(q.written(waiting, used[waiting])) == fr.Reply(16, 0, 12, b"")
    error, out = _answer(frontend, fr.getlk(18, node, fh, A, WR))
    assert error == 0 and fr.parse_lk(out)[2:] == (WR, 5)


def test_interrupt_on_hiprio_ends_the_wait(frontend: VhostUserFrontend) -> None:
    node, fh = _setup(frontend)
    assert _answer(frontend, fr.setlk(10, node, fh, A, WR))[0] == 0
    waiting = _submit(frontend, fr.setlkw(12, node, fh, B, WR))
    time.sleep(0.1)
    assert frontend.queues[1].take_used() == []
    interrupt = frontend.queues[0].add_request([fr.interrupt(13, 12)], [], indirect=False)
    frontend.kick(0)
    assert frontend.wait_used(0) == [(interrupt, 0)]  # INTERRUPT itself gets no reply
    [(head, length)] = frontend.wait_used(1)
    assert head == waiting
    reply = fr.parse_reply(frontend.queues[1].written(head, length))
    assert (reply.unique, reply.error) == (12, -errno.EINTR)


def test_a_host_lock_holds_a_guest_setlkw(frontend: VhostUserFrontend, shared_dir: Path) -> None:
    node, fh = _setup(frontend)
    with open(shared_dir / "locked", "r+b") as host:
        fcntl.lockf(host, fcntl.LOCK_EX)
        waiting = _submit(frontend, fr.setlkw(12, node, fh, B, WR))
        time.sleep(0.2)
        assert frontend.queues[1].take_used() == []
    [(head, length)] = frontend.wait_used(1)  # the host closed its file
    assert head == waiting
    assert fr.parse_reply(frontend.queues[1].written(head, length)).error == 0


@pytest.mark.parametrize("waiters", [8])
def test_many_waiters_one_interrupt_each(frontend: VhostUserFrontend, waiters: int) -> None:
    node, fh = _setup(frontend)
    assert _answer(frontend, fr.setlk(10, node, fh, A, WR))[0] == 0
    heads = {_submit(frontend, fr.setlkw(100 + i, node, fh, 0x100 + i, WR)): 100 + i
             for i in range(waiters)}  # fmt: skip
    # No sleep: an INTERRUPT that overtakes its SETLKW (hiprio served first) still ends it.
    for i in range(waiters):
        frontend.queues[0].add_request([fr.interrupt(200 + i, 100 + i)], [], indirect=False)
    frontend.kick(0)
    frontend.wait_used(0, waiters)
    used = frontend.wait_used(1, waiters)
    assert sorted(h for h, _ in used) == sorted(heads)
    for head, length in used:
        reply = fr.parse_reply(frontend.queues[1].written(head, length))
        assert (reply.unique, reply.error) == (heads[head], -errno.EINTR)


def test_stopping_the_queue_answers_a_waiting_setlkw(frontend: VhostUserFrontend) -> None:
    """A VM paused (GET_VRING_BASE) while a guest process waits for a lock: the request is
    answered with EINTR before the ring base is reported, so it is not lost on resume."""
    node, fh = _setup(frontend)
    assert _answer(frontend, fr.setlk(10, node, fh, A, WR))[0] == 0
    waiting = _submit(frontend, fr.setlkw(12, node, fh, B, WR))
    time.sleep(0.1)
    q = frontend.queues[1]
    assert q.take_used() == []
    bases = frontend.stop()
    used = q.take_used()
    assert [head for head, _ in used] == [waiting]
    assert fr.parse_reply(q.written(waiting, used[0][1])).error == -errno.EINTR
    assert bases[1] == q.avail_idx
