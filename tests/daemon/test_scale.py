"""Scale without a guest: ``fsd serve`` forgets what the driver forgets, fds and memory alike.

A real daemon process and the scripted front-end (memfd guest memory, eventfds, indirect
chains). 100,000 files are looked up and forgotten in waves (the daemon holds an fd per live
inode, and this host's hard RLIMIT_NOFILE may be as low as 20,000), a 10,000-entry directory is
listed with READDIRPLUS and its entries forgotten. contrib/bench_scale.py measures the same
against the reference daemons, plus a 4 GiB stream.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import pytest

from fsd.testing import fuse_requests as fr
from fsd.testing.frontend import VhostUserFrontend
from fsd.testing.serve import ServeProcess

FILES = 100_000
WAVE = 10_000
WIDE = 10_000
BATCH = 100
"""Chains per kick: the queue holds 128."""
PAGE = 4096


class Driver:
    """Pipelined requests over a started front-end."""

    def __init__(self, fe: VhostUserFrontend) -> None:
        self.fe = fe
        self.unique = 1

    def next(self) -> int:
        self.unique += 1
        return self.unique

    def collect(self, queue: int, count: int) -> dict[int, int]:
        """``count`` used entries (head → length) from ``queue``.

        Taking entries moves ``used_event`` forward; an entry pushed just before, checked by
        the daemon against the old value, brings no interrupt. So the used index is read again
        after taking (as Linux's virtqueue_enable_cb_delayed does) and waits are short.
        """
        q = self.fe.queues[queue]
        used: dict[int, int] = {}
        deadline = time.monotonic() + 30
        while True:
            used.update(q.take_used())
            if len(used) >= count:
                return used
            if q.used_idx == q.last_used:
                assert time.monotonic() < deadline, f"{len(used)} of {count} replies"
                self.fe.wait_call(queue, timeout=0.005)

    def pipelined(self, queue: int, requests: list[bytes], reply: list[int]) -> list[fr.Reply]:
        q = self.fe.queues[queue]
        heads = [q.add_request(data, reply) for data in requests]
        self.fe.kick(queue)
        used = self.collect(queue, len(heads))
        return [fr.parse_reply(q.written(h, used[h])) if reply else fr.Reply(0, 0, 0, b"")
                for h in heads]  # fmt: skip

    def call(self, data: bytes, reply: list[int] | None = None) -> fr.Reply:
        [answer] = self.pipelined(1, [data], reply or [PAGE])
        assert answer.error == 0, answer
        return answer

    def lookup_all(self, parent: int, names: list[str]) -> Counter[int]:
        nodes: Counter[int] = Counter()
        for start in range(0, len(names), BATCH):
            chunk = names[start : start + BATCH]
            replies = self.pipelined(1, [fr.lookup(self.next(), parent, n) for n in chunk], [PAGE])
            for name, reply in zip(chunk, replies, strict=True):
                assert reply.error == 0, f"LOOKUP {name}: errno {-reply.error}"
                nodes[fr.parse_entry(reply.payload).nodeid] += 1
        return nodes

    def forget_all(self, nodes: Counter[int]) -> None:
        """One FORGET per node on the hiprio queue, as Linux's virtio_fs sends them."""
        items = list(nodes.items())
        for start in range(0, len(items), BATCH):
            chunk = items[start : start + BATCH]
            self.pipelined(0, [fr.forget(self.next(), node, n) for node, n in chunk], [])


def footprint(pid: int) -> tuple[int, int]:
    """(anonymous resident KiB, open fds) of ``pid``: guest memory is shared, not anonymous."""
    status = Path(f"/proc/{pid}/status").read_text()
    anon = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("RssAnon"))
    return anon, len(os.listdir(f"/proc/{pid}/fd"))


def make_files(directory: Path, prefix: str, count: int) -> list[str]:
    directory.mkdir()
    names = [f"{prefix}{i}" for i in range(count)]
    for name in names:
        os.close(os.open(directory / name, os.O_CREAT | os.O_WRONLY, 0o644))
    return names


@pytest.fixture
def driver(frontend: VhostUserFrontend) -> Driver:
    frontend.start()
    d = Driver(frontend)
    d.call(fr.init_request(d.next()))
    return d


def test_100k_lookups_forgotten_leave_no_fds_and_no_growth(
    driver: Driver, daemon: ServeProcess, shared_dir: Path
) -> None:
    names = make_files(shared_dir / "many", "f", FILES)
    parent = fr.parse_entry(driver.call(fr.lookup(driver.next(), 1, "many")).payload).nodeid
    pid = daemon.server_pid
    _, base_fds = footprint(pid)
    after: list[tuple[int, int]] = []
    for first in range(0, FILES, WAVE):
        nodes = driver.lookup_all(parent, names[first : first + WAVE])
        assert len(nodes) == WAVE, "every file is its own inode"
        peak_fds = footprint(pid)[1]
        assert peak_fds <= base_fds + WAVE + 4
        driver.forget_all(nodes)
        after.append(footprint(pid))
    assert [fds for _, fds in after] == [base_fds] * len(after), "an fd outlived its FORGET"
    # The first wave sizes the tables and the allocator's arenas; later waves reuse them. A
    # leak of even 100 bytes per inode would add ~9 MB over the remaining 90,000.
    growth_kib = after[-1][0] - after[0][0]
    assert growth_kib < 4096, f"RSS grew {growth_kib} KiB from wave 1 to wave {len(after)}"


def test_10k_entry_directory_listed_once_each_and_forgotten(
    driver: Driver, daemon: ServeProcess, shared_dir: Path
) -> None:
    names = make_files(shared_dir / "wide", "w", WIDE)
    wide = fr.parse_entry(driver.call(fr.lookup(driver.next(), 1, "wide")).payload).nodeid
    pid = daemon.server_pid
    _, base_fds = footprint(pid)
    fh, _ = fr.parse_open(driver.call(fr.opendir(driver.next(), wide)).payload)
    seen: Counter[bytes] = Counter()
    nodes: Counter[int] = Counter()
    offset = 0
    requests = 0
    while True:
        reply = driver.call(fr.readdirplus(driver.next(), wide, fh, offset, PAGE), [16, PAGE])
        requests += 1
        entries = fr.parse_direntplus(reply.payload)
        if not entries:
            break
        for entry in entries:
            offset = entry.off
            seen[entry.name] += 1
            if entry.name not in (b".", b"..") and entry.entry is not None:
                nodes[entry.entry.nodeid] += 1
    driver.call(fr.releasedir(driver.next(), wide, fh))
    assert seen - Counter({b".": 1, b"..": 1}) == Counter(n.encode() for n in names)
    assert requests > WIDE // 50, "a 4 KiB buffer holds a few dozen entries, not all"
    assert len(nodes) == WIDE
    driver.forget_all(nodes)
    assert footprint(pid)[1] == base_fds
