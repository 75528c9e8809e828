"""Scale checks through the scripted front-end: many inodes, a wide directory, a 4 GiB file.

The same vhost-user path a guest uses (memfd guest memory, eventfds, indirect chains), without
the guest: under TCG a guest would need minutes for what takes seconds here. For fsd and each
reference, one session:

* 100,000 files looked up and forgotten, in waves (default 10,000 alive at once: this host's
  hard RLIMIT_NOFILE is 20,000 and cannot be raised, and every back-end holds an O_PATH fd per
  inode it was told about). LOOKUPs and FORGETs are pipelined 100 to a kick, FORGETs on the
  hiprio queue one per request as Linux's virtio_fs sends them. The daemon's RSS without guest
  memory (smaps, minus the /memfd: mappings) and its open fds are read before, at each wave's
  peak and after each wave: a leak shows as fds above the baseline or RSS that grows wave by wave.
* a 10,000-entry directory listed with READDIRPLUS into 4 KiB buffers (as the kernel asks),
  then every entry forgotten (READDIRPLUS hands out a lookup reference per entry).
* a 4 GiB file streamed through as serial 496 KiB READs (the most a 128-entry queue carries).
  The file is sparse and read once on the host before each back-end streams it: the host's
  page cache serves it, so this measures the transport and the back-end, not the disk.

    .venv/bin/python contrib/bench_scale.py [--files 100000] [--wave 10000] [--stream-gib 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import bench_common as bc
from bench_transport import BIG_PAGES, PAGE, Session, vhost_session

from fsd.testing import fuse_requests as fr

BATCH = 100
"""Requests per kick (the queue holds 128 chains)."""


@dataclass
class Phase:
    """Client wall seconds, back-end CPU seconds and requests of one kind of work."""

    wall: float = 0.0
    cpu: float = 0.0
    count: int = 0


@dataclass
class ScaleRun:
    """What one back-end's session measured."""

    key: str
    marks: dict[str, bc.Footprint] = field(default_factory=dict)
    phases: dict[str, Phase] = field(default_factory=dict)
    peaks: list[bc.Footprint] = field(default_factory=list)
    after_waves: list[bc.Footprint] = field(default_factory=list)
    listed: int = 0
    readdir_requests: int = 0
    streamed: int = 0
    errors: list[str] = field(default_factory=list)


LOST_WAKEUPS = Counter[str]()
"""Waits that ended by the timeout with replies in the ring (see :func:`collect`)."""


def collect(s: Session, queue: int, count: int) -> list[tuple[int, int]]:
    """Wait for ``count`` used entries on ``queue``.

    Taking used entries moves ``used_event`` (EVENT_IDX) forward; a back-end that pushed an
    entry just before, and checked the old ``used_event``, sends no interrupt for it. So look
    at the used index again after moving it (Linux's ``virtqueue_enable_cb_delayed`` does,
    with a barrier Python cannot issue), and never block for long.
    """
    q = s.fe.queues[queue]
    used: list[tuple[int, int]] = []
    deadline = time.monotonic() + 60
    while True:
        used += q.take_used()
        if len(used) >= count:
            return used
        if q.used_idx != q.last_used:
            continue
        if time.monotonic() > deadline:
            raise TimeoutError(f"queue {queue}: {len(used)} of {count} replies")
        if not s.fe.wait_call(queue, timeout=0.005) and q.used_idx != q.last_used:
            LOST_WAKEUPS[f"queue {queue}"] += 1


def pipelined(s: Session, queue: int, requests: list[tuple[bytes, list[int]]]) -> list[fr.Reply]:
    """Submit ``requests`` on ``queue`` with one kick and collect every reply, in order."""
    q = s.fe.queues[queue]
    heads = [q.add_request(data, sizes) for data, sizes in requests]
    s.fe.kick(queue)
    used = dict(collect(s, queue, len(heads)))
    return [
        fr.parse_reply(q.written(h, used[h])) if used[h] else fr.Reply(0, 0, 0, b"") for h in heads
    ]


def forget_all(s: Session, counts: Counter[int]) -> None:
    items = list(counts.items())
    for start in range(0, len(items), BATCH):
        chunk = items[start : start + BATCH]
        pipelined(s, 0, [(fr.forget(s.next(), node, n), []) for node, n in chunk])


class Timer:
    def __init__(self, pid: int, phase: Phase) -> None:
        self.pid, self.phase = pid, phase

    def __enter__(self) -> Timer:
        self.cpu0, self.t0 = bc.threads_cpu_ns(self.pid), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.phase.wall += time.perf_counter() - self.t0
        self.phase.cpu += (bc.threads_cpu_ns(self.pid) - self.cpu0) / 1e9


def lookup_waves(s: Session, pid: int, run: ScaleRun, files: int, wave: int) -> None:
    many = s.call(fr.lookup(s.next(), 1, "many"))
    parent = fr.parse_entry(many.payload).nodeid
    run.marks["start"] = bc.footprint(pid)
    lookups, forgets = Phase(), Phase()
    for first in range(0, files, wave):
        nodes: Counter[int] = Counter()
        names = [f"f{i}" for i in range(first, min(first + wave, files))]
        with Timer(pid, lookups):
            for start in range(0, len(names), BATCH):
                chunk = names[start : start + BATCH]
                replies = pipelined(s, 1, [(fr.lookup(s.next(), parent, n), [PAGE]) for n in chunk])
                for name, reply in zip(chunk, replies, strict=True):
                    if reply.error:
                        run.errors.append(f"LOOKUP {name}: errno {-reply.error}")
                    else:
                        nodes[fr.parse_entry(reply.payload).nodeid] += 1
        lookups.count += len(names)
        run.peaks.append(bc.footprint(pid))
        with Timer(pid, forgets):
            forget_all(s, nodes)
        forgets.count += sum(nodes.values())
        run.after_waves.append(bc.footprint(pid))
        if run.errors:
            return
    run.phases["lookup"], run.phases["forget"] = lookups, forgets


def list_wide(s: Session, pid: int, run: ScaleRun) -> None:
    wide = fr.parse_entry(s.call(fr.lookup(s.next(), 1, "wide")).payload).nodeid
    phase = Phase()
    nodes: Counter[int] = Counter()
    with Timer(pid, phase):
        opened = s.call(fr.opendir(s.next(), wide))
        fh, _ = fr.parse_open(opened.payload)
        offset = 0
        while True:
            reply = s.call(fr.readdirplus(s.next(), wide, fh, offset, PAGE), [16, PAGE])
            if reply.error:
                run.errors.append(f"READDIRPLUS: errno {-reply.error}")
                break
            run.readdir_requests += 1
            entries = fr.parse_direntplus(reply.payload)
            if not entries:
                break
            for entry in entries:
                offset = entry.off
                if entry.name in (b".", b".."):
                    continue
                run.listed += 1
                if entry.entry is not None and entry.entry.nodeid:
                    nodes[entry.entry.nodeid] += 1
        s.call(fr.releasedir(s.next(), wide, fh))
    phase.count = run.listed
    run.phases["list"] = phase
    run.marks["listed"] = bc.footprint(pid)
    forget_all(s, nodes)
    run.marks["listed, forgotten"] = bc.footprint(pid)


def warm(path: Path) -> None:
    """Read ``path`` on the host: the first read of a sparse file's holes fills the page cache
    (~1.2 ms of kernel time per 496 KiB here), and no back-end should pay it for the others."""
    with open(path, "rb", buffering=0) as f:
        buffer = bytearray(1 << 20)
        while f.readinto(buffer):
            pass


def stream(s: Session, pid: int, run: ScaleRun, size: int, host_file: Path) -> None:
    warm(host_file)
    entry = fr.parse_entry(s.call(fr.lookup(s.next(), 1, "huge")).payload)
    fh, _ = fr.parse_open(s.call(fr.open_(s.next(), entry.nodeid)).payload)
    chunk = BIG_PAGES * PAGE
    phase = Phase()
    with Timer(pid, phase):
        offset = 0
        while offset < size:
            reply = s.call(
                fr.read(s.next(), entry.nodeid, fh, offset, chunk), [16] + [PAGE] * BIG_PAGES
            )
            if reply.error or not reply.payload:
                run.errors.append(f"READ at {offset}: errno {-reply.error}")
                break
            offset += len(reply.payload)
            phase.count += 1
    run.streamed = offset
    s.call(fr.release(s.next(), entry.nodeid, fh))
    forget_all(s, Counter({entry.nodeid: 1}))
    run.phases["stream"] = phase
    run.marks["streamed"] = bc.footprint(pid)


def run_backend(key: str, shared: Path, args: argparse.Namespace) -> ScaleRun:
    run = ScaleRun(key)
    log = bc.REPO_ROOT / "build" / "bench" / f"scale-{key}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with vhost_session(key, shared, log_path=log) as (s, proc):
        run.marks["after INIT"] = bc.footprint(proc.pid)
        lookup_waves(s, proc.pid, run, args.files, args.wave)
        list_wide(s, proc.pid, run)
        stream(s, proc.pid, run, args.stream_gib << 30, shared / "huge")
    return run


def make_tree(root: Path, files: int, wide: int, stream_gib: int) -> None:
    """many/f0..: the lookup files; wide/w0..: the listed directory; huge: sparse."""
    for name, count, prefix in (("many", files, "f"), ("wide", wide, "w")):
        directory = root / name
        directory.mkdir()
        for i in range(count):
            os.close(os.open(directory / f"{prefix}{i}", os.O_CREAT | os.O_WRONLY, 0o644))
    with open(root / "huge", "wb") as huge:
        huge.truncate(stream_gib << 30)


def mark(footprint: bc.Footprint | None) -> str:
    return f"{footprint.rss_kib / 1024:.1f} MiB, {footprint.fds} fds" if footprint else "—"


def rate(phase: Phase | None, amount: float | None = None) -> str:
    """``amount`` (default: the phase's count) per second of the phase's wall time."""
    if phase is None or not phase.wall:
        return "—"
    return bc.fmt((phase.count if amount is None else amount) / phase.wall)


def cpu_per(phase: Phase | None, amount: float | None = None) -> str:
    """Back-end CPU µs per item (default: per request of the phase)."""
    if phase is None or not phase.count:
        return "—"
    return bc.fmt(phase.cpu * 1e6 / (phase.count if amount is None else amount))


def run_cells(r: ScaleRun, args: argparse.Namespace) -> list[str]:
    """One column of the report."""
    start = r.marks.get("start")
    first_peak = r.peaks[0] if r.peaks else None
    first_after = r.after_waves[0] if r.after_waves else None
    last_after = r.after_waves[-1] if r.after_waves else None
    per_inode = (
        bc.fmt((first_peak.rss_kib - start.rss_kib) * 1024 / args.wave)
        if first_peak and start
        else "—"
    )
    growth = f"{last_after.rss_kib - first_after.rss_kib}" if last_after and first_after else "—"
    fds_left = f"{last_after.fds - start.fds}" if last_after and start else "—"
    stream = r.phases.get("stream")
    return [
        rate(r.phases.get("lookup")),
        cpu_per(r.phases.get("lookup")),
        rate(r.phases.get("forget")),
        cpu_per(r.phases.get("forget")),
        mark(start),
        mark(first_peak),
        mark(first_after),
        mark(r.peaks[-1] if r.peaks else None),
        mark(last_after),
        per_inode,
        growth,
        fds_left,
        rate(r.phases.get("list")),
        f"{r.listed} / {r.readdir_requests}",
        cpu_per(r.phases.get("list")),
        f"{mark(r.marks.get('listed'))}; {mark(r.marks.get('listed, forgotten'))}",
        rate(stream, r.streamed / 1e6),
        cpu_per(stream, r.streamed / (1 << 30) * 1e6) if r.streamed else "—",
        f"{r.streamed:,}",
        mark(r.marks.get("streamed")),
        "; ".join(r.errors[:3]) or "none",
    ]


def report(runs: list[ScaleRun], args: argparse.Namespace) -> str:
    waves = -(-args.files // args.wave)
    labels = [
        f"{args.files:,} LOOKUPs, {waves} waves of {args.wave:,} (lookups/s)",
        "  back-end CPU per LOOKUP (µs)",
        f"{args.files:,} FORGETs (forgets/s)",
        "  back-end CPU per FORGET (µs)",
        "RSS without guest memory, open fds: after INIT",
        f"  at wave 1's peak ({args.wave:,} inodes alive)",
        "  after wave 1 forgotten",
        f"  at wave {waves}'s peak",
        f"  after wave {waves} forgotten",
        "  RSS per live inode at the peak (bytes)",
        f"  RSS growth from wave 1 to wave {waves}, both forgotten (KiB)",
        f"  fds open after wave {waves} beyond those after INIT",
        f"list {args.wide:,} entries, READDIRPLUS 4 KiB (entries/s)",
        "  entries listed / READDIRPLUS requests",
        "  back-end CPU per entry (µs)",
        "  RSS, fds: listed; entries forgotten",
        f"stream {args.stream_gib} GiB, serial 496 KiB READs (MB/s)",
        "  back-end CPU per GiB (s)",
        "  bytes streamed",
        "  RSS, fds after streaming",
        "errors",
    ]
    columns = [run_cells(r, args) for r in runs]
    rows = [[label, *(c[i] for c in columns)] for i, label in enumerate(labels)]
    return bc.table(["check", *(bc.VHOST_LABELS[r.key] for r in runs)], rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--wave", type=int, default=10_000, help="inodes alive at once")
    parser.add_argument("--wide", type=int, default=10_000, help="entries in the listed dir")
    parser.add_argument("--stream-gib", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="20,000 files, 1 GiB")
    parser.add_argument("--no-deps", action="store_true", help="do not run bench-deps.sh")
    args = parser.parse_args()
    if args.quick:
        args.files, args.stream_gib = 20_000, 1
    bc.ensure_deps(args.no_deps)
    keys = [k for k in bc.VHOST_BACKENDS if not bc.vhost_missing(k)]
    with tempfile.TemporaryDirectory(prefix="fsd-bench-scale-") as tmp:
        shared = Path(tmp)
        print(f"creating {args.files:,} + {args.wide:,} files in {shared}", file=sys.stderr)
        make_tree(shared, args.files, args.wide, args.stream_gib)
        runs = []
        for key in keys:
            print(f"scale: {bc.VHOST_LABELS[key]}", file=sys.stderr)
            runs.append(run_backend(key, shared, args))
    print(
        "scale through the scripted front-end (one session per back-end, requests on the "
        "queue thread); RSS excludes guest memory (the /memfd: mappings)"
    )
    print()
    print(report(runs, args))
    if LOST_WAKEUPS:
        lost = ", ".join(f"{n} on {q}" for q, n in LOST_WAKEUPS.items())
        print(f"\n(front-end waits that ended by their 5 ms timeout with replies waiting: {lost})")
    return 1 if any(r.errors for r in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
