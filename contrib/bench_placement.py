"""Where a FUSE daemon runs beside its client, and what that does to one request at a time.

A client that waits for each reply (``stat`` of cold files, as bench_mount.py's row) wakes the
daemon for every request and is woken by every reply. When the two run on one CPU, each
wake-up is a switch on that CPU; when they run on two, each is an inter-processor interrupt,
and on a virtual machine waking an idle virtual CPU goes through the hypervisor. The kernel's
scheduler decides which, from how busy each task keeps its CPU: a daemon that spends a few
microseconds per request is pulled onto its client's CPU, a busier one is left on its own.

This script measures it: ``fsd mount`` and libfuse's passthrough_hp (its default
multi-threaded loop, and ``--single``, one thread as fsd's default) stat the same cold files
three ways (after a pass that is not counted): placed by the scheduler, pinned to one CPU with
the client, pinned apart from it.
It prints the rate, the daemon's CPU per stat, and where each ran. Needs root and two CPUs.

    .venv/bin/python contrib/bench_placement.py [--files 5000] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bench_common as bc
import bench_mount as bm

OUT_DIR = bc.REPO_ROOT / "build" / "bench" / "placement"


@dataclass(frozen=True)
class Daemon:
    label: str
    argv: Callable[[Path, Path], list[str]]


DAEMONS = {
    "fsd": Daemon("fsd mount", lambda s, m: bm.daemon_argv("fsd", s, m, None)),
    "hp": Daemon("passthrough_hp", lambda s, m: bm.daemon_argv("hp", s, m, None)),
    "hp-single": Daemon(
        "passthrough_hp --single", lambda s, m: [*bm.daemon_argv("hp", s, m, None), "--single"]
    ),
}


@dataclass
class Thread:
    """A task's CPU time, context switches and migrations so far, and its last CPU."""

    cpu_ns: int
    switches: int
    migrations: int
    last_cpu: int


def threads_of(pids: list[int]) -> dict[int, Thread]:
    found = {}
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                sched = Path(f"/proc/{pid}/task/{tid}/sched").read_text()
                schedstat = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text()
            except OSError:
                continue
            fields = {
                key.strip(): value.strip()
                for key, _, value in (line.partition(":") for line in sched.splitlines())
            }
            found[tid] = Thread(
                cpu_ns=int(schedstat.split()[0]),
                switches=int(fields.get("nr_switches", 0)),
                migrations=int(float(fields.get("se.nr_migrations", 0))),
                last_cpu=int(stat.rpartition(")")[2].split()[36]),  # field 39: processor
            )
    return found


@dataclass
class Rep:
    rate: float
    daemon_cpu_us: float
    daemon_cpu: int
    client_cpu: int
    daemon_migrations: int
    client_migrations: int


PLACEMENTS = ("free", "together", "apart")


def pinned_cpus(placement: str, cpus: tuple[int, int]) -> tuple[int | None, int | None]:
    """The daemon's and the client's CPU for ``placement``; None: where the scheduler likes."""
    if placement == "free":
        return None, None
    if placement == "together":
        return cpus[0], cpus[0]
    return cpus


def stat_reps(key: str, placement: str, cpus: tuple[int, int], files: int, reps: int) -> list[Rep]:
    """Mount ``key``'s daemon placed as ``placement`` says; stat the files cold ``reps`` times."""
    base = OUT_DIR / "run"
    share, mnt = base / "share", base / "mnt"
    bm.unmount(mnt)
    shutil.rmtree(base, ignore_errors=True)
    (share / "c").mkdir(parents=True)
    mnt.mkdir()
    for i in range(files):
        (share / "c" / f"f{i}").touch()
    daemon_cpu, client_cpu = pinned_cpus(placement, cpus)
    everywhere = os.sched_getaffinity(0)

    def pin_daemon() -> None:
        if daemon_cpu is not None:
            os.sched_setaffinity(0, {daemon_cpu})

    log = open(OUT_DIR / f"{key}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        DAEMONS[key].argv(share, mnt), stdout=log, stderr=log, preexec_fn=pin_daemon
    )
    paths = [mnt / "c" / f"f{i}" for i in range(files)]
    me = os.getpid()  # the client: this script's only thread
    results = []
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mnt):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{DAEMONS[key].label} did not mount; see {log.name}")
            time.sleep(0.05)
        if client_cpu is not None:
            os.sched_setaffinity(0, {client_cpu})
        for rep in range(reps + 1):  # rep 0 warms up: every daemon's first pass is slower
            bm.drop_caches()
            for i in range(files):
                os.stat(share / "c" / f"f{i}")
            time.sleep(0.5)  # the FORGETs of the drop reach the daemon first
            tree = bc.process_tree(proc.pid)
            before, me0 = threads_of(tree), threads_of([me])[me]
            t0 = time.perf_counter()
            for path in paths:
                os.stat(path)
            seconds = time.perf_counter() - t0
            if rep == 0:
                continue
            after, me1 = threads_of(bc.process_tree(proc.pid)), threads_of([me])[me]
            pairs = [(before[tid], t) for tid, t in after.items() if tid in before]
            # Where the daemon ran: its thread that switched most (the one serving requests).
            busiest = max(pairs, key=lambda pair: pair[1].switches - pair[0].switches)[1]
            results.append(
                Rep(
                    rate=files / seconds,
                    daemon_cpu_us=sum(t.cpu_ns - b.cpu_ns for b, t in pairs) / files / 1e3,
                    daemon_cpu=busiest.last_cpu,
                    client_cpu=me1.last_cpu,
                    daemon_migrations=sum(t.migrations - b.migrations for b, t in pairs),
                    client_migrations=me1.migrations - me0.migrations,
                )
            )
    finally:
        os.sched_setaffinity(0, everywhere)
        bm.unmount(mnt)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    return results


def report(rows: list[tuple[str, str, list[Rep]]], files: int) -> str:
    lines = [
        f"stat of {files} cold files, one at a time, by where the daemon and the client ran "
        "(reps in order; medians)",
        "",
        "| daemon | placement | stat/s | stat/s by rep | daemon CPU µs/stat | CPUs daemon, client "
        "| migrations daemon, client |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, placement, reps in rows:
        rates = [r.rate for r in reps]
        where = " ".join(f"{r.daemon_cpu},{r.client_cpu}" for r in reps)
        moves = " ".join(f"{r.daemon_migrations},{r.client_migrations}" for r in reps)
        lines.append(
            f"| {DAEMONS[key].label} | {placement} | {statistics.median(rates):.0f} | "
            + " ".join(f"{x:.0f}" for x in rates)
            + f" | {statistics.median(r.daemon_cpu_us for r in reps):.1f} | {where} | {moves} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-deps", action="store_true", help="do not run bench-deps.sh")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (mounting, dropping caches)", file=sys.stderr)
        return 2
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        print("needs two CPUs", file=sys.stderr)
        return 2
    bc.ensure_deps(args.no_deps)
    keys = ["fsd"]
    if (missing := bm.daemon_missing("hp")) is None:
        keys += ["hp", "hp-single"]
    else:
        print(f"!! passthrough_hp left out: {missing}", file=sys.stderr)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    cpus = (available[0], available[1])
    rows = []
    for placement in PLACEMENTS:
        for key in keys:
            print(f"{DAEMONS[key].label}: {placement}", file=sys.stderr)
            rows.append((key, placement, stat_reps(key, placement, cpus, args.files, args.reps)))
    print(report(rows, args.files))
    print()
    print(f"together: daemon and client on CPU {cpus[0]}; apart: daemon on {cpus[0]}, client on "
          f"{cpus[1]}; machine: {bc.machine()}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
