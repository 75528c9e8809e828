"""Guest benchmark: fsd beside QEMU's C virtiofsd (the reference) in the same run, under TCG.

Each round boots the test-bed guest once per backend (the order alternates: fsd then ref,
then ref then fsd, so a drift in the host does not favour one side) and runs the same
workload: sequential dd, O_DIRECT dd, 4k random reads (fio, if the host has it to copy into
the guest), and metadata on 2000 files. The guest times each test with its own clock; the
host samples the backend's CPU time (its whole process tree, from /proc) between tests
through ``host_step``, so every row also gets the backend's CPU cost.

Under TCG the emulated guest is the bottleneck and rows are noisy (20–40 % run to run):
compare the two backends only within one run, and read the CPU table beside the rates.
This script measures; nothing here asserts a speed. See docs/performance.md.

    python contrib/bench.py [--rounds 2] [--quick] [--count-requests]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Run as a script, Python puts contrib/ on sys.path, not the checkout holding fsd.
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import trio  # noqa: E402

from fsd.testing.guest import (  # noqa: E402
    Backend,
    BackendError,
    GuestImage,
    build_testbed,
    fsd_env,
    fsd_serve_command,
    newc_archive,
    run_guest,
    running_backend,
    virtiofsd_command,
)

OUT_DIR = REPO_ROOT / "build" / "bench"
GUEST_BIN = "/opt/bench/bin"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Test:
    """One row: the guest reports (seconds, amount); the rate is amount / seconds."""

    name: str
    label: str
    unit: str
    scale: float
    """Divides the amount for the rate (bytes → MB)."""
    per_op: str
    """What one operation is, for the CPU-per-operation table."""
    op_scale: float
    """Divides the amount into operations (bytes → MiB)."""


TESTS = [
    Test("seq_write", "seq write {mb}M bs=1M conv=fsync (MB/s)", "MB/s", 1e6, "MiB", 1 << 20),
    Test("seq_read_cold", "seq read cold bs=1M (MB/s)", "MB/s", 1e6, "MiB", 1 << 20),
    Test("direct_write", "seq write O_DIRECT bs=1M (MB/s)", "MB/s", 1e6, "MiB", 1 << 20),
    Test("direct_read", "seq read O_DIRECT bs=1M (MB/s)", "MB/s", 1e6, "MiB", 1 << 20),
    Test("dd_4k_direct", "dd 4k O_DIRECT sequential reads (ops/s)", "ops/s", 1, "read", 1),
    Test("fio_psync", "fio 4k randread psync direct (IOPS)", "IOPS", 1, "read", 1),
    Test("fio_libaio", "fio 4k randread libaio qd16 direct (IOPS)", "IOPS", 1, "read", 1),
    Test("create", "create {files} files (ops/s)", "ops/s", 1, "file", 1),
    Test("stat_cold", "stat {files} cold (ops/s)", "ops/s", 1, "file", 1),
    Test("ls_l", "ls -l {files} entries, cold (entries/s)", "entries/s", 1, "entry", 1),
    Test("rm_rf", "rm -rf {files} files (ops/s)", "ops/s", 1, "file", 1),
]

# busybox sh, sourced by the test bed's /init with cwd on the virtio-fs mount. Times come from
# /proc/uptime read with the `read` builtin: 10 ms resolution, no fork, no request to the
# backend. After each test, `host_step cpu NAME` lets the host sample the backend's CPU time.
WORKLOAD = r"""
set -u
MB=@MB@ FILES=@FILES@ FIO_SECONDS=@FIO_SECONDS@ DIRECT_4K=@DIRECT_4K@
FIO=@GUEST_BIN@/fio
now() { read -r up idle < /proc/uptime; echo "$up"; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
cpu() { host_step cpu "$1" > /dev/null || { echo "BENCH-FAIL host_step cpu $1"; exit 1; }; }
fail() { echo "BENCH-FAIL $1"; cat /tmp/bench.out; exit 1; }
timed() {  # timed NAME AMOUNT CMD...: the guest's wall time for CMD, then the backend's CPU
    name=$1 amount=$2
    shift 2
    read -r start idle < /proc/uptime
    "$@" > /tmp/bench.out 2>&1 || fail "$name: $*"
    read -r end idle < /proc/uptime
    awk -v n="$name" -v s="$start" -v e="$end" -v a="$amount" \
        'BEGIN { printf "BENCH %s %.3f %s\n", n, e - s, a }'
    cpu "$name"
}
fio_test() {  # fio_test NAME ENGINE DEPTH: fio's own runtime and I/O count
    name=$1
    drop
    cpu "$name-setup"
    "$FIO" --name="$name" --filename=big --readonly --rw=randread --bs=4k --direct=1 \
        --ioengine="$2" --iodepth="$3" --thread --time_based --runtime="$FIO_SECONDS" \
        --minimal > /tmp/bench.out 2>&1 || fail "$name: fio"
    awk -F';' -v n="$name" 'NF > 9 { printf "BENCH %s %.3f %d\n", n, $9 / 1000, $6 / 4 }' \
        /tmp/bench.out
    cpu "$name"
}
create_files() { i=0; while [ $i -lt $FILES ]; do : > d/f$i || return 1; i=$((i + 1)); done; }
stat_files() { i=0; while [ $i -lt $FILES ]; do [ -e d/f$i ] || return 1; i=$((i + 1)); done; }
bytes=$((MB * 1048576))

cpu start
timed seq_write $bytes dd if=/dev/zero of=big bs=1M count=$MB conv=fsync
drop; cpu seq_read_cold-setup
timed seq_read_cold $bytes dd if=big of=/dev/null bs=1M
timed direct_write $bytes dd if=/dev/zero of=direct bs=1M count=$MB oflag=direct
drop; cpu direct_read-setup
timed direct_read $bytes dd if=direct of=/dev/null bs=1M iflag=direct
rm -f direct
timed dd_4k_direct $DIRECT_4K dd if=big of=/dev/null bs=4k count=$DIRECT_4K iflag=direct
if [ -x "$FIO" ]; then
    fio_test fio_psync psync 1
    fio_test fio_libaio libaio 16
else
    echo "BENCH-SKIP fio (not in the guest)"
fi
rm -f big
mkdir d
drop; cpu create-setup
timed create $FILES create_files
drop; cpu stat_cold-setup
timed stat_cold $FILES stat_files
drop; cpu ls_l-setup
timed ls_l $FILES ls -l d
timed rm_rf $FILES rm -rf d
"""


@dataclass
class Run:
    """One guest boot against one backend."""

    backend: str
    round: int
    rates: dict[str, float] = field(default_factory=dict)
    amounts: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Per test: the backend's (user, sys) seconds spent during the test."""
    cpu_total: tuple[float, float] | None = None
    """(user, sys) seconds from the workload's start to its end."""
    requests: int | None = None
    error: str | None = None
    wall: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)
    """The host's 1-minute load average before and after: other work on the host is noise."""


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the C virtiofsd forks into a sandbox child)."""
    pids = [pid]
    for parent in pids:
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as children:
                    pids.extend(int(child) for child in children.read().split())
            except OSError:
                continue
    return pids


def tree_cpu(pid: int) -> tuple[float, float]:
    """(user, sys) seconds of a process tree, reaped children included; 1/CLK_TCK resolution."""
    user = system = 0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is the state (field 3); utime, stime, cutime, cstime are fields 14–17.
        user += int(fields[11]) + int(fields[13])
        system += int(fields[12]) + int(fields[14])
    return user / CLK_TCK, system / CLK_TCK


def guest_extras(with_fio: bool) -> dict[str, bytes]:
    """fio and every shared library it needs, at the paths its loader looks for."""
    if not with_fio:
        return {}
    fio = shutil.which("fio")
    if fio is None:
        return {}
    files = {f"{GUEST_BIN.lstrip('/')}/fio": Path(fio).read_bytes()}
    listing = subprocess.run(["ldd", fio], capture_output=True, text=True, check=True).stdout
    for line in listing.splitlines():
        words = line.split()
        path = words[2] if "=>" in words and len(words) > 2 else words[0] if words else ""
        if path.startswith("/"):
            files[path.lstrip("/")] = Path(path).resolve().read_bytes()
    return files


def bench_image(base: GuestImage, extras: dict[str, bytes]) -> GuestImage:
    """The test bed's initramfs with ``extras`` appended as one more cpio archive."""
    if not extras:
        return base
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / "initramfs-bench.cpio"
    with path.open("wb") as out:
        data = base.initramfs.read_bytes()
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))
        out.write(newc_archive(extras))
    return GuestImage(kernel=base.kernel, initramfs=path)


def parse_output(run: Run, output: str) -> None:
    for line in output.splitlines():
        words = line.split()
        if len(words) == 4 and words[0] == "BENCH":
            name, seconds, amount = words[1], float(words[2]), float(words[3])
            run.amounts[name] = amount
            test = next((t for t in TESTS if t.name == name), None)
            if test is not None and seconds > 0:
                run.rates[name] = amount / test.scale / seconds


def cpu_deltas(run: Run, samples: list[tuple[str, tuple[float, float]]]) -> None:
    """Turn cumulative samples into the CPU each test (not its setup) cost."""
    for (_, before), (name, after) in itertools.pairwise(samples):
        if not name.endswith("-setup"):
            run.cpu[name] = (after[0] - before[0], after[1] - before[1])
    if len(samples) >= 2:
        first, last = samples[0][1], samples[-1][1]
        run.cpu_total = (last[0] - first[0], last[1] - first[1])


async def one_run(
    backend_name: str,
    round_no: int,
    args: argparse.Namespace,
    image: GuestImage,
    workload: str,
    progress: Callable[[str], None],
) -> Run:
    run = Run(backend_name, round_no)
    run_dir = OUT_DIR / f"{backend_name}-r{round_no}"
    shutil.rmtree(run_dir, ignore_errors=True)
    shared = run_dir / "shared"
    shared.mkdir(parents=True)
    log_path = run_dir / "backend.log"
    samples: list[tuple[str, tuple[float, float]]] = []
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="fsd-bench-") as tmp:
        socket_path = Path(tmp) / "fs.sock"
        if backend_name == "fsd":
            extra = ["--log-level", "debug"] if args.count_requests else []
            argv = fsd_serve_command(socket_path, shared, *extra)
        else:
            argv = virtiofsd_command(socket_path, shared)
        try:
            async with running_backend(argv, socket_path, log_path=log_path, env=fsd_env()) as b:
                backend: Backend = b

                async def on_step(name: str, step_args: list[str]) -> str:
                    if name != "cpu" or not step_args:
                        return f"!unknown step {name}"
                    samples.append((step_args[0], tree_cpu(backend.process.pid)))
                    if not step_args[0].endswith("-setup"):
                        progress(f"  {backend_name} r{round_no}: {step_args[0]} done")
                    return "ok"

                result = await run_guest(
                    workload,
                    socket_path=socket_path,
                    guest_image=image,
                    on_step=on_step,
                    time_limit=args.time_limit,
                )
                # Give fsd a moment to notice the disconnect and log its queue counts.
                await trio.sleep(0.2)
        except BackendError as exc:
            run.error = f"backend failed: {exc}"
            return run
    run.wall = time.monotonic() - started
    run.load = (load_before, os.getloadavg()[0])
    (run_dir / "console.log").write_text(result.console)
    parse_output(run, result.output)
    cpu_deltas(run, samples)
    if args.count_requests and backend_name == "fsd":
        run.requests = count_chains(log_path)
    if result.exit_status != 0:
        run.error = (
            f"{result.describe()}\n--- workload output ---\n{result.output}"
            f"--- backend log: {log_path} ---\n{tail(log_path)}"
        )
    else:
        shutil.rmtree(shared, ignore_errors=True)
    return run


def count_chains(log_path: Path) -> int | None:
    """Chains served, from fsd's debug line "queue N stopped at M after K chains"."""
    total = None
    for line in log_path.read_text(errors="replace").splitlines():
        if "stopped at" in line and line.rstrip().endswith("chains"):
            total = (total or 0) + int(line.split()[-2])
    return total


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "—"


def report(runs: list[Run], args: argparse.Namespace, has_fio: bool) -> str:
    rounds = args.rounds
    by = {(r.backend, r.round): r for r in runs}
    names = ["fsd", "ref"]
    out: list[str] = []
    cols = [f"{n} r{i}" for n in names for i in range(1, rounds + 1)]
    header = ["test", *cols, "fsd mean", "ref mean", "fsd/ref"]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "---|" * len(header))
    for test in TESTS:
        if test.name.startswith("fio") and not has_fio:
            continue
        label = test.label.format(mb=args.mb, files=args.files)
        cells = [label]
        means = {}
        for n in names:
            values = [by[(n, i)].rates.get(test.name) for i in range(1, rounds + 1)]
            cells.extend(fmt(v) for v in values)
            present = [v for v in values if v is not None]
            means[n] = mean(present)
        cells += [fmt(means["fsd"]), fmt(means["ref"]), ratio(means["fsd"], means["ref"])]
        out.append("| " + " | ".join(cells) + " |")

    def cpu_row(label: str, pick: Callable[[tuple[float, float]], float]) -> None:
        cells = [label]
        means = {}
        for n in names:
            values = [by[(n, i)].cpu_total for i in range(1, rounds + 1)]
            picked = [pick(v) if v is not None else None for v in values]
            cells.extend(fmt(v) for v in picked)
            means[n] = mean([v for v in picked if v is not None])
        fsd_mean, ref_mean = means["fsd"], means["ref"]
        cells += [fmt(fsd_mean), fmt(ref_mean), ratio(fsd_mean, ref_mean) + "x"]
        out.append("| " + " | ".join(cells) + " |")

    def plain_row(label: str, pick: Callable[[Run], float]) -> None:
        cells = [label]
        for n in names:
            cells.extend(fmt(pick(by[(n, i)])) for i in range(1, rounds + 1))
        out.append("| " + " | ".join([*cells, "", "", ""]) + " |")

    plain_row("guest run, boot to power-off (s)", lambda r: r.wall)
    plain_row("host load avg (1 min) after the run", lambda r: r.load[1])
    cpu_row("**backend CPU s (user+sys), workload**", lambda c: c[0] + c[1])
    cpu_row("  user s", lambda c: c[0])
    cpu_row("  sys s", lambda c: c[1])

    out.append("")
    out.append("Backend CPU per guest operation (µs, user+sys, mean over rounds):")
    out.append("")
    out.append("| test | per | fsd µs | ref µs | fsd/ref |")
    out.append("|---|---|---|---|---|")
    for test in TESTS:
        per_op = {}
        for n in names:
            op_costs: list[float] = []
            for i in range(1, rounds + 1):
                run = by[(n, i)]
                cpu = run.cpu.get(test.name)
                amount = run.amounts.get(test.name)
                if cpu is not None and amount:
                    op_costs.append((cpu[0] + cpu[1]) * 1e6 / (amount / test.op_scale))
            per_op[n] = mean(op_costs)
        if per_op["fsd"] is None and per_op["ref"] is None:
            continue
        out.append(
            f"| {test.name} | {test.per_op} | {fmt(per_op['fsd'])} | {fmt(per_op['ref'])} "
            f"| {ratio(per_op['fsd'], per_op['ref'])} |"
        )
    requests = [r for r in runs if r.requests]
    if requests:
        out.append("")
        out.append("fsd requests (chains served, whole guest run incl. boot) and CPU per request:")
        for r in sorted(requests, key=lambda r: r.round):
            per = ""
            if r.cpu_total and r.requests:
                per = f", {(r.cpu_total[0] + r.cpu_total[1]) * 1e6 / r.requests:.1f} µs/request"
                per += " (workload CPU / all requests)"
            out.append(f"- r{r.round}: {r.requests} requests{per}")
    return "\n".join(out)


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    qemu = subprocess.run(
        ["qemu-system-x86_64", "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    return (
        f"host {platform.node()}: {cpu}, {os.cpu_count()} cores, Linux {platform.release()}; "
        f"{qemu[0] if qemu else 'qemu ?'}; Python {platform.python_version()}"
    )


async def main(args: argparse.Namespace) -> int:
    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    base = GuestImage.default()
    if not base.exists():
        progress("building the guest test bed (contrib/testbed/build.sh)")
        base = build_testbed()
    extras = guest_extras(not args.no_fio)
    has_fio = bool(extras)
    if not has_fio and not args.no_fio:
        progress("no fio on the host (apt-get install fio): fio rows skipped")
    image = bench_image(base, extras)
    workload = (
        WORKLOAD.replace("@MB@", str(args.mb))
        .replace("@FILES@", str(args.files))
        .replace("@FIO_SECONDS@", str(args.fio_seconds))
        .replace("@DIRECT_4K@", str(args.direct_4k))
        .replace("@GUEST_BIN@", GUEST_BIN)
    )
    runs: list[Run] = []
    started = time.monotonic()
    for round_no in range(1, args.rounds + 1):
        order = ["fsd", "ref"] if round_no % 2 else ["ref", "fsd"]
        for name in order:
            progress(f"round {round_no}: {name}")
            run = await one_run(name, round_no, args, image, workload, progress)
            runs.append(run)
            if run.error:
                progress(f"!! {name} round {round_no} FAILED:\n{run.error}")
            else:
                progress(f"  {name} r{round_no}: guest run {run.wall:.1f} s")
    elapsed = time.monotonic() - started
    header = (
        f"fsd guest benchmark, measured under TCG (-smp 1, guest 1G): fsd (`python -m fsd "
        f"serve`) beside ref (QEMU's C virtiofsd, cache=auto), {args.rounds} round(s) "
        f"alternating, file {args.mb} MiB, {args.files} files"
        + (f", fio {args.fio_seconds} s per job" if has_fio else ", no fio")
        + f". Rates: higher is better; fsd/ref > 1 means fsd was faster. {elapsed:.0f} s total."
    )
    print(header)
    print(machine())
    print()
    print(report(runs, args, has_fio))
    (OUT_DIR / "results.json").write_text(
        json.dumps([r.__dict__ for r in runs], indent=1, default=list)
    )
    failed = [r for r in runs if r.error]
    for r in failed:
        print(f"\n!! {r.backend} round {r.round} failed; see {OUT_DIR}/{r.backend}-r{r.round}/")
    return 1 if failed else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 2, quick 1)")
    parser.add_argument("--quick", action="store_true", help="1 round, 64 MiB, short fio")
    parser.add_argument("--mb", type=int, default=None, help="file size in MiB (default 256)")
    parser.add_argument("--files", type=int, default=2000, help="files in the metadata tests")
    parser.add_argument("--fio-seconds", type=int, default=None, help="fio runtime per job")
    parser.add_argument("--direct-4k", type=int, default=10000, help="4k O_DIRECT dd reads")
    parser.add_argument("--no-fio", action="store_true", help="do not copy fio into the guest")
    parser.add_argument(
        "--count-requests",
        action="store_true",
        help="run fsd with --log-level debug to count the chains it served (slower fsd)",
    )
    parser.add_argument("--time-limit", type=float, default=300.0, help="per guest run, s")
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    if args.mb is None:
        args.mb = 64 if args.quick else 256
    if args.fio_seconds is None:
        args.fio_seconds = 3 if args.quick else 8
    return args


if __name__ == "__main__":
    sys.exit(trio.run(main, parse_args()))
