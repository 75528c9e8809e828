"""Host-side benchmark of ``fsd mount`` beside libfuse's passthrough_hp and pyfuse3's example.

Three FUSE daemons serve the same host directory, one at a time, on the host's /dev/fuse:
``fsd mount`` (the fsd filesystem through the host kernel), libfuse's passthrough_hp (C++,
libfuse 3.14 from Debian's source package) and pyfuse3's example passthroughfs.py (a Python
peer on trio). Each runs with its own defaults (see docs/performance.md for what differs).
The order rotates round by round; the tables give medians over rounds.

Each run: create 5,000 empty files; stat them cold; write 2,000 4 KiB files and read them back
cold; write a file sequentially in 1 MiB blocks (fsync at the end) and read it back cold; 4 KiB
reads at random page offsets of that file, each missing the page cache (POSIX_FADV_RANDOM: no
readahead). "Cold" means cold in the mount: ``sync; echo 3 > /proc/sys/vm/drop_caches`` drops
the FUSE mount's dentries, inodes and pages, then the host files are read directly (not through
the mount) so that the daemon finds them in the host's cache: the rows measure the daemons,
not this machine's disk. The daemon's CPU (user+sys of its process, all threads) is read from
/proc between phases. Needs root.

    .venv/bin/python contrib/bench_mount.py [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import bench_common as bc

OUT_DIR = bc.REPO_ROOT / "build" / "bench" / "mount"
DAEMONS = ("fsd", "hp", "pyfuse3")
LABELS = {"fsd": "fsd mount", "hp": "passthrough_hp", "pyfuse3": "pyfuse3 passthroughfs"}
SHORT = {"fsd": "fsd", "hp": "hp", "pyfuse3": "pyfuse3"}
PAGE = 4096


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    unit: str
    per_op: str
    kind: str


ROWS = [
    Row("create", "create {files} files (files/s)", "files/s", "file", "metadata"),
    Row("stat_cold", "stat {files} cold (files/s)", "files/s", "file", "metadata"),
    Row("small_write", "write {small} 4 KiB files (files/s)", "files/s", "file", "metadata"),
    Row("small_read", "read {small} 4 KiB files cold (files/s)", "files/s", "file", "metadata"),
    Row("seq_write", "seq write {mb} MiB bs=1M + fsync (MB/s)", "MB/s", "MiB", "throughput"),
    Row("seq_read", "seq read {mb} MiB bs=1M cold (MB/s)", "MB/s", "MiB", "throughput"),
    Row("rand_read", "4 KiB random reads, page cache missed (IOPS)", "IOPS", "read", "latency"),
]


def daemon_argv(key: str, shared: Path, mountpoint: Path, fsd_cfg: str | None) -> list[str]:
    if key == "fsd":
        argv = [sys.executable, "-m", "fsd", "mount", str(shared), str(mountpoint)]
        return [*argv, "--cfg", fsd_cfg] if fsd_cfg else argv
    if key == "hp":
        return [str(bc.PASSTHROUGH_HP), "--foreground", str(shared), str(mountpoint)]
    return [str(bc.PYFUSE3_PASSTHROUGH), str(shared), str(mountpoint)]


def daemon_missing(key: str) -> str | None:
    if key == "hp" and not bc.PASSTHROUGH_HP.exists():
        return f"no {bc.PASSTHROUGH_HP} (contrib/bench-deps.sh did not finish)"
    if key == "pyfuse3" and not bc.PYFUSE3_PASSTHROUGH.exists():
        return f"no {bc.PYFUSE3_PASSTHROUGH} (contrib/bench-deps.sh did not finish)"
    return None


def daemon_version(key: str) -> str:
    if key == "fsd":
        return bc.vhost_version("fsd")
    if key == "hp":
        dsc = sorted((bc.DEPS_DIR / "fuse3" / "src").glob("fuse3_*.dsc"))
        return f"libfuse from Debian's {dsc[0].stem}" if dsc else "libfuse ?"
    python = bc.DEPS_DIR / "pyfuse3" / "venv" / "bin" / "python"
    result = subprocess.run(
        [str(python), "-c", "import pyfuse3, trio; print(pyfuse3.__version__, trio.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    versions = result.stdout.split()
    return f"pyfuse3 {versions[0]}, trio {versions[1]}" if len(versions) == 2 else "?"


def drop_caches() -> None:
    """Write back, then drop the page cache, dentries and inodes (FUSE ones send FORGETs)."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def warm(paths: list[Path]) -> None:
    """Read host files directly (not through the mount), so the daemon finds them cached."""
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 20):
                pass


@dataclass
class Run:
    daemon: str
    round: int
    rates: dict[str, float] = field(default_factory=dict)
    amounts: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    """Per row: the daemon's user+sys seconds during the row."""
    cpu_total: tuple[float, float] | None = None
    footprint_end: bc.Footprint | None = None
    error: str | None = None


class Workload:
    """The phases, run against one mounted daemon."""

    def __init__(self, args: argparse.Namespace, mnt: Path, host: Path, pid: int) -> None:
        self.args, self.mnt, self.host, self.pid = args, mnt, host, pid
        self.run_cpu = bc.tree_cpu(pid)

    def timed(
        self, run: Run, row: str, amount: float, scale: float, body: Callable[[], None]
    ) -> None:
        cpu0, t0 = bc.tree_cpu(self.pid), time.perf_counter()
        body()
        seconds = time.perf_counter() - t0
        cpu1 = bc.tree_cpu(self.pid)
        run.rates[row] = amount / scale / seconds
        run.amounts[row] = amount
        run.cpu[row] = (cpu1[0] - cpu0[0]) + (cpu1[1] - cpu0[1])

    def settle(self, warm_paths: list[Path]) -> None:
        drop_caches()
        warm(warm_paths)
        time.sleep(0.5)  # the FORGETs the drop queued reach the daemon before the next row

    def run(self, run: Run) -> None:
        a, mnt, host = self.args, self.mnt, self.host
        files = [mnt / "c" / f"f{i}" for i in range(a.files)]
        (mnt / "c").mkdir()

        def create() -> None:
            for path in files:
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))

        self.timed(run, "create", a.files, 1, create)
        drop_caches()
        for i in range(a.files):
            os.stat(host / "c" / f"f{i}")
        time.sleep(0.5)

        def stat() -> None:
            for path in files:
                os.stat(path)

        self.timed(run, "stat_cold", a.files, 1, stat)
        small = [mnt / "s" / f"s{i}" for i in range(a.small)]
        (mnt / "s").mkdir()
        block = os.urandom(PAGE)

        def small_write() -> None:
            for path in small:
                fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
                os.write(fd, block)
                os.close(fd)

        self.timed(run, "small_write", a.small, 1, small_write)
        self.settle([host / "s" / f"s{i}" for i in range(a.small)])

        def small_read() -> None:
            for path in small:
                fd = os.open(path, os.O_RDONLY)
                if len(os.read(fd, 2 * PAGE)) != PAGE:
                    raise RuntimeError(f"{path}: short read")
                os.close(fd)

        self.timed(run, "small_read", a.small, 1, small_read)
        big, size = mnt / "big", a.mb << 20
        chunk = os.urandom(1 << 20)

        def seq_write() -> None:
            fd = os.open(big, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
            for _ in range(a.mb):
                os.write(fd, chunk)
            os.fsync(fd)
            os.close(fd)

        self.timed(run, "seq_write", size, 1e6, seq_write)
        self.settle([host / "big"])

        def seq_read() -> None:
            fd = os.open(big, os.O_RDONLY)
            total = 0
            while data := os.read(fd, 1 << 20):
                total += len(data)
            os.close(fd)
            if total != size:
                raise RuntimeError(f"read {total} of {size} bytes")

        self.timed(run, "seq_read", size, 1e6, seq_read)
        self.settle([host / "big"])
        pages = random.Random(12).sample(range(size // PAGE), a.reads)

        def rand_read() -> None:
            fd = os.open(big, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            for page in pages:
                if len(os.pread(fd, PAGE, page * PAGE)) != PAGE:
                    raise RuntimeError("short read")
            os.close(fd)

        self.timed(run, "rand_read", a.reads, 1, rand_read)
        end = bc.tree_cpu(self.pid)
        run.cpu_total = (end[0] - self.run_cpu[0], end[1] - self.run_cpu[1])
        run.footprint_end = bc.footprint(self.pid)


def unmount(mnt: Path) -> None:
    if os.path.ismount(mnt):
        subprocess.run(["umount", str(mnt)], check=False, capture_output=True)
    if os.path.ismount(mnt):
        subprocess.run(["umount", "--lazy", str(mnt)], check=False, capture_output=True)


def one_run(key: str, round_no: int, args: argparse.Namespace) -> Run:
    run = Run(key, round_no)
    shared, mnt = OUT_DIR / "share", OUT_DIR / "mnt"
    unmount(mnt)
    shutil.rmtree(shared, ignore_errors=True)
    shared.mkdir(parents=True)
    mnt.mkdir(parents=True, exist_ok=True)
    log_path = OUT_DIR / f"{key}-r{round_no}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            daemon_argv(key, shared, mnt, args.fsd_cfg),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(bc.REPO_ROOT)},
        )
        try:
            deadline = time.monotonic() + 20
            while not os.path.ismount(mnt):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{LABELS[key]} did not mount; see {log_path}")
                time.sleep(0.02)
            Workload(args, mnt, shared, proc.pid).run(run)
        except (OSError, RuntimeError) as exc:
            run.error = f"{type(exc).__name__}: {exc}"
        finally:
            # Unmounting ends the session: each daemon then exits by itself.
            unmount(mnt)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    shutil.rmtree(shared, ignore_errors=True)
    return run


def report(runs: list[Run], keys: list[str], args: argparse.Namespace) -> str:
    refs = [k for k in keys if k != "fsd"]
    by = {(r.daemon, r.round): r for r in runs if not r.error}

    def values(key: str, pick: Callable[[Run], float | None]) -> list[float | None]:
        rounds = range(1, args.rounds + 1)
        return [pick(by[(key, i)]) if (key, i) in by else None for i in rounds]

    def by_round(ref: str, pick: Callable[[Run], float | None]) -> str:
        pairs = zip(values("fsd", pick), values(ref, pick), strict=True)
        return " ".join(f"{a / b:.2f}" if a is not None and b else "—" for a, b in pairs)

    header = ["row", "kind", *(SHORT[k] for k in keys)]
    header += [f"fsd/{SHORT[k]}" for k in refs] + [f"fsd/{SHORT[k]} by round" for k in refs]
    rows = []
    for row in ROWS:

        def rate(run: Run, name: str = row.name) -> float | None:
            return run.rates.get(name)

        medians = {k: bc.median(values(k, rate)) for k in keys}
        cells = [row.label.format(files=args.files, small=args.small, mb=args.mb), row.kind]
        cells += [bc.fmt(medians[k]) for k in keys]
        cells += [bc.ratio(medians["fsd"], medians[k]) for k in refs]
        cells += [by_round(k, rate) for k in refs]
        rows.append(cells)
    rates = bc.table(header, rows)

    header = ["daemon CPU", *(SHORT[k] for k in keys)]
    header += [f"fsd/{SHORT[k]}" for k in refs] + [f"fsd/{SHORT[k]} by round" for k in refs]
    rows = []
    picks: list[tuple[str, Callable[[Run], float | None]]] = [
        ("**whole workload, user+sys (s)**", lambda r: sum(r.cpu_total) if r.cpu_total else None),
        ("  user (s)", lambda r: r.cpu_total[0] if r.cpu_total else None),
        ("  sys (s)", lambda r: r.cpu_total[1] if r.cpu_total else None),
    ]
    for row in ROWS:
        scale = 1 << 20 if row.per_op == "MiB" else 1

        def per_op(run: Run, name: str = row.name, scale: int = scale) -> float | None:
            cpu, amount = run.cpu.get(name), run.amounts.get(name)
            return cpu * 1e6 / (amount / scale) if cpu is not None and amount else None

        picks.append((f"  {row.name}, µs per {row.per_op}", per_op))
    for label, pick in picks:
        medians = {k: bc.median(values(k, pick)) for k in keys}
        cells = [label, *(bc.fmt(medians[k]) for k in keys)]
        cells += [bc.ratio(medians["fsd"], medians[k]) for k in refs]
        cells += [by_round(k, pick) for k in refs]
        rows.append(cells)
    cells = ["RSS at the end of round 1 (MiB), open fds"]
    for k in keys:
        run = by.get((k, 1))
        fp = run.footprint_end if run else None
        cells.append(f"{fp.rss_kib / 1024:.1f}, {fp.fds}" if fp else "—")
    rows.append(cells + [""] * (2 * len(refs)))
    cpu = bc.table(header, rows)
    return "\n".join(
        [
            "Rates (median over rounds; higher is better; fsd/X > 1: fsd was faster):",
            "",
            rates,
            "",
            "Daemon CPU (median over rounds; 10 ms ticks; fsd/X > 1: fsd used more). Rows with "
            "small totals (stat, small files) are coarse:",
            "",
            cpu,
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 5, quick 1)")
    parser.add_argument("--files", type=int, default=5000, help="files to create and stat")
    parser.add_argument("--small", type=int, default=2000, help="4 KiB files written and read")
    parser.add_argument("--mb", type=int, default=None, help="sequential file, MiB (256)")
    parser.add_argument("--reads", type=int, default=5000, help="random 4 KiB reads")
    parser.add_argument("--fsd-cfg", default=None, help="fsd mount --cfg (default: none)")
    parser.add_argument("--quick", action="store_true", help="1 round, 64 MiB")
    parser.add_argument("--no-deps", action="store_true", help="do not run bench-deps.sh")
    args = parser.parse_args()
    if args.rounds is None:
        args.rounds = 1 if args.quick else 5
    if args.mb is None:
        args.mb = 64 if args.quick else 256
    if os.geteuid() != 0:
        print("bench_mount: needs root (mount(2), drop_caches)", file=sys.stderr)
        return 2
    bc.ensure_deps(args.no_deps)
    keys = []
    for key in DAEMONS:
        missing = daemon_missing(key)
        if missing:
            print(f"!! {LABELS[key]} left out: {missing}", file=sys.stderr)
        else:
            keys.append(key)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    started, load = time.monotonic(), os.getloadavg()[0]
    runs = []
    for round_no in range(1, args.rounds + 1):
        shift = (round_no - 1) % len(keys)
        for key in keys[shift:] + keys[:shift]:
            print(f"round {round_no}: {LABELS[key]}", file=sys.stderr, flush=True)
            run = one_run(key, round_no, args)
            if run.error:
                print(f"!! {LABELS[key]} round {round_no} failed: {run.error}", file=sys.stderr)
            runs.append(run)
    print(
        f"fsd mount beside FUSE peers on the host, {args.rounds} round(s) rotating the order, "
        f"{(time.monotonic() - started) / 60:.0f} min in all"
    )
    for key in keys:
        argv = " ".join(daemon_argv(key, Path("SHARED"), Path("MNT"), args.fsd_cfg))
        print(f"- {LABELS[key]}: {daemon_version(key)}: `{argv}`")
    print(f"- machine: {bc.machine()} (load average at the start: {load:.2f})")
    print()
    print(report(runs, keys, args))
    (OUT_DIR / "results.json").write_text(json.dumps([asdict(r) for r in runs], indent=1))
    return 1 if any(r.error for r in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
