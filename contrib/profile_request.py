"""The request path in one process: what one request costs from the ring to the used entry.

Builds guest memory, a driver-side queue shaped like Linux's virtio_fs (one indirect table per
request: in_header and arguments in separate readable descriptors, out_header and reply
arguments in separate writable ones) and fsd's own queue worker, then serves requests with
``QueueRunner.drain()`` called directly: no threads, no vhost-user, no other process. It
prints, per request kind, the Python and C calls one request makes (counted with
``sys.setprofile``: deterministic, the figure to watch while slimming the path) and the time
per request served one per wake-up and 64 per wake-up (hot caches: a lower bound of what the
daemon pays, where each request arrives alone), and one per wake-up after an idle pause and a
sweep through 4 MiB of memory ("cold": in the daemon every request finds the CPU's caches
filled by the guest's and QEMU's work since the last one; this is the column in which running
less distinct code per request shows: the generic decode and dispatch cost a READ ~3 µs here,
~0.4 hot).

    .venv/bin/python contrib/profile_request.py [--requests N] [--profile KIND]

``--profile KIND`` prints a cProfile of that kind instead (GETATTR, LOOKUP, READ4K, ...);
``--calls KIND`` lists the calls of one request. ``--latency-histogram`` serves through the
status view's timing wrapper (``fsd serve --latency-histogram``), to measure what it adds.
Timings on a shared 2-core machine move by
2x between runs; instructions do not. ``--serve KIND`` only serves requests, so that
callgrind's count over two request counts gives the instructions of one request:

    for n in 1000 3000; do valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$n \\
        .venv/bin/python contrib/profile_request.py --serve GETATTR --requests $n; done
    # (Ir(3000) - Ir(1000)) / 2000, Ir from `callgrind_annotate /tmp/cg.N | head`
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import itertools
import mmap
import os
import pstats
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from fsd.daemon.queues import QueueRunner  # noqa: E402
from fsd.fs import FsOptions, PassthroughFs  # noqa: E402
from fsd.fuse import FuseServer, abi  # noqa: E402
from fsd.hooks_fuse import make_request_handler  # noqa: E402
from fsd.status import RequestLatency, timed_handler  # noqa: E402
from fsd.testing import fuse_requests as fr  # noqa: E402
from fsd.testing.driver import DriverQueue, GuestAllocator  # noqa: E402
from fsd.virtio.memory import GuestMemory, GuestRegion  # noqa: E402
from fsd.virtio.splitq import SplitQueue  # noqa: E402

_U16 = struct.Struct("<H")
PAGE = 4096
MEMORY = 64 << 20
QUEUE_SIZE = 128

#: The "cold" column: an idle pause and a sweep through memory larger than this machine's
#: per-core L2 (2 MiB) before each request.
COLD_PAUSE = 300e-6
COLD_SWEEP = 4 << 20

#: (request parts as Linux's virtio_fs puts them in descriptors, reply descriptor sizes)
Shape = tuple[list[bytes], list[int]]


class Bench:
    """A served share, a driver queue and fsd's queue runner over one guest memory."""

    def __init__(self, share: Path, *, latency_histogram: bool = False) -> None:
        self.mapping = mmap.mmap(-1, MEMORY)
        memory = memoryview(self.mapping)
        self.driver = DriverQueue(
            memory, GuestAllocator(0, 1 << 20), GuestAllocator(1 << 20, MEMORY), QUEUE_SIZE
        )
        guest = GuestMemory([GuestRegion(0, memory)])
        queue = SplitQueue(
            guest,
            size=QUEUE_SIZE,
            desc_gpa=self.driver.desc_gpa,
            avail_gpa=self.driver.avail_gpa,
            used_gpa=self.driver.used_gpa,
            event_idx=True,
        )
        self.fs = PassthroughFs(share, FsOptions())
        server = FuseServer(self.fs)
        handler = make_request_handler(server, None)
        if latency_histogram:
            handler = timed_handler(handler, RequestLatency())
        self.kick = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.call = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        four = server.handle_four if handler == server.handle else None  # as fsd serve does
        self.runner = QueueRunner(1, queue, self.kick, self.call, handler, four_handler=four)
        self.unique = 0
        self.serve([[fr.init_request(self.next())], [16, abi.INIT_OUT.size]])

    def next(self) -> int:
        self.unique += 2
        return self.unique

    def add(self, shape: Shape) -> int:
        parts, reply = shape
        return self.driver.add_request(parts, reply)

    def publish_again(self, head: int) -> None:
        """Put chain ``head`` (already in the descriptor table) in the avail ring again, as
        if the guest sent the same request: driver work of two stores, so that what is
        measured is fsd's. The used entries are read back as a driver would (used_event)."""
        d = self.driver
        mem = d.memory
        _U16.pack_into(mem, d.avail_gpa + 4 + 2 * (d.avail_idx % d.size), head)
        d.avail_idx = (d.avail_idx + 1) & 0xFFFF
        _U16.pack_into(mem, d.avail_gpa + 2, d.avail_idx)

    def consumed(self) -> None:
        """The driver took every used entry: ask for an interrupt at the next one."""
        d = self.driver
        _U16.pack_into(d.memory, d.avail_gpa + 4 + 2 * d.size, self.runner.queue.next_used)

    def serve(self, *shapes: Shape) -> list[bytes]:
        heads = [self.add(shape) for shape in shapes]
        self.runner.drain()
        used = dict(self.driver.take_used())
        return [self.driver.written(head, used[head]) for head in heads]


def split(request: bytes, *cuts: int) -> list[bytes]:
    """Cut a request into descriptors at the given offsets (Linux: one per argument)."""
    points = [0, *cuts, len(request)]
    return [request[a:b] for a, b in itertools.pairwise(points) if b > a]


def kinds(b: Bench, nodeid: int, fh: int) -> dict[str, Callable[[], Shape]]:
    h = abi.IN_HEADER.size
    return {
        "GETATTR": lambda: (split(fr.getattr(b.next(), nodeid), h), [16, abi.ATTR_OUT.size]),
        "LOOKUP": lambda: (split(fr.lookup(b.next(), 1, "data.bin"), h), [16, abi.ENTRY_OUT.size]),
        "LOOKUPNEG": lambda: (
            split(fr.lookup(b.next(), 1, "missing"), h),
            [16, abi.ENTRY_OUT.size],
        ),
        "READ4K": lambda: (split(fr.read(b.next(), nodeid, fh, 0, PAGE), h), [16, PAGE]),
        "READ496K": lambda: (
            split(fr.read(b.next(), nodeid, fh, 0, 124 * PAGE), h),
            [16] + [PAGE] * 124,
        ),
        "WRITE4K": lambda: (
            split(fr.write(b.next(), nodeid, fh, 0, b"x" * PAGE), h, h + abi.WRITE_IN.size),
            [16, abi.WRITE_OUT.size],
        ),
        "WRITE496K": lambda: (
            split(
                fr.write(b.next(), nodeid, fh, 0, b"x" * 124 * PAGE),
                h,
                h + abi.WRITE_IN.size,
                *range(h + abi.WRITE_IN.size + PAGE, h + abi.WRITE_IN.size + 124 * PAGE, PAGE),
            ),
            [16, abi.WRITE_OUT.size],
        ),
        "FLUSH": lambda: (split(fr.flush(b.next(), nodeid, fh), h), [16]),
    }


def count_calls(fn: Callable[[], object]) -> tuple[int, int, collections.Counter[str]]:
    counts: collections.Counter[str] = collections.Counter()
    python = native = 0

    def profile(frame: object, event: str, arg: object) -> None:
        nonlocal python, native
        if event == "call":
            python += 1
            code = frame.f_code  # type: ignore[attr-defined]
            counts[f"{Path(code.co_filename).name}:{code.co_name}"] += 1
        elif event == "c_call":
            native += 1
            counts[f"<c> {getattr(arg, '__qualname__', arg)}"] += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return python, native, counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--profile", metavar="KIND")
    parser.add_argument("--calls", metavar="KIND", help="list the calls one KIND request makes")
    parser.add_argument(
        "--latency-histogram",
        action="store_true",
        help="time each request into the status view's latency histograms, as fsd serve "
        "--latency-histogram does",
    )
    parser.add_argument(
        "--serve",
        metavar="KIND",
        help="only serve --requests KIND requests, one per wake-up (for callgrind: see below)",
    )
    args = parser.parse_args()
    os.umask(0)
    with tempfile.TemporaryDirectory(prefix="fsd-profile-") as tmp:
        share = Path(tmp)
        (share / "data.bin").write_bytes(os.urandom(124 * PAGE))
        b = Bench(share, latency_histogram=args.latency_histogram)
        entry = fr.parse_entry(fr.parse_reply(b.serve(kinds(b, 1, 0)["LOOKUP"]())[0]).payload)
        opened = b.serve(([fr.open_(b.next(), entry.nodeid, os.O_RDWR)], [16, 16]))[0]
        fh = fr.parse_open(fr.parse_reply(opened).payload)[0]
        shapes = kinds(b, entry.nodeid, fh)
        for shape in shapes.values():  # warm up; check every kind succeeds
            reply = fr.parse_reply(b.serve(shape())[0])
            assert reply.error in (0, -2), reply
        if args.profile:
            make = shapes[args.profile]
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(args.requests):
                b.serve(make())
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
            return 0
        if args.serve:
            head = b.add(shapes[args.serve]())  # one request, published again and again
            b.runner.drain()
            b.consumed()
            for _ in range(args.requests):
                b.publish_again(head)
                b.runner.drain()
                b.consumed()
            return 0
        if args.calls:
            make = shapes[args.calls]
            b.add(make())
            python, native, counts = count_calls(b.runner.drain)
            b.driver.take_used()
            for name, n in counts.most_common():
                print(f"{n:4} {name}")
            print(f"{python} Python calls, {native} C calls")
            return 0
        print(f"in-process request path, {args.requests} requests per kind, hot caches")
        columns = ["request", "Python calls", "C calls", "µs/req, 1 per wake-up", "64 per wake-up"]
        columns.append("1 per wake-up, cold")
        sweep = bytearray(COLD_SWEEP)
        print("| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|")
        for label, make in shapes.items():
            b.add(make())
            python, native, _ = count_calls(b.runner.drain)
            b.driver.take_used()
            timings = []
            for batch in (1, 64):
                count = args.requests if "496" not in label else args.requests // 8
                spent = 0.0
                for _ in range(count // batch):
                    for _ in range(batch):
                        b.add(make())
                    t0 = time.perf_counter()
                    b.runner.drain()
                    spent += time.perf_counter() - t0
                    b.driver.take_used()
                timings.append(spent / (count // batch * batch) * 1e6)
            cold = []
            for _ in range(max(100, args.requests // 6)):
                b.add(make())
                time.sleep(COLD_PAUSE)
                sweep[::64] = bytes(len(sweep) // 64)  # one store per cache line
                t0 = time.perf_counter()
                b.runner.drain()
                cold.append(time.perf_counter() - t0)
                b.driver.take_used()
            timings.append(sorted(cold)[len(cold) // 2] * 1e6)  # median: sleeps wake late
            cells = " | ".join(f"{t:.1f}" for t in timings)
            print(f"| {label} | {python} | {native} | {cells} |")
        b.fs.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
