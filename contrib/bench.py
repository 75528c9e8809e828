"""Guest benchmark: fsd beside the Rust virtiofsd and QEMU's C virtiofsd, in one run, under TCG.

Each round boots the test-bed guest once per back-end and runs the same workload: sequential
dd, O_DIRECT dd, 4k random reads (fio, copied from the host into the guest) and metadata on
2000 files. The order of the back-ends rotates round by round, so none always runs first or
after the same one. The guest times each test with its own clock; between tests it calls
``host_step`` and the host samples the back-end's CPU time (its whole process tree, from
/proc), so every row also gets the back-end's CPU cost.

A counting pass (one more, untimed guest run per back-end) counts the requests each test
sends: fsd through a plugin that logs one line per request (contrib/bench_request_log.py), the
references through their debug logs. Those runs are slower and only give the requests per
guest operation, from which the CPU per request of the timed runs follows.

Under TCG the emulated guest is the bottleneck and rows are noisy (20-40 % run to run):
compare back-ends only within one run, over several rounds, and read the CPU tables beside the
rates. This script measures; nothing here asserts a speed. See docs/performance.md.

    python contrib/bench.py [--rounds 4] [--quick] [--no-count]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import bench_common as bc
import trio

from fsd.fuse.abi import Opcode
from fsd.testing.guest import (
    BackendError,
    GuestImage,
    build_testbed,
    fsd_env,
    newc_archive,
    run_guest,
    running_backend,
)

OUT_DIR = bc.REPO_ROOT / "build" / "bench"
GUEST_BIN = "/opt/bench/bin"
SHORT = {"fsd": "fsd", "rust": "Rust", "c": "C"}

SERIAL = "one at a time"
"""Rows whose guest waits for each request's reply before sending the next."""


@dataclass(frozen=True)
class Test:
    """One row: the guest reports (seconds, amount); the rate is amount / seconds."""

    name: str
    label: str
    kind: str
    """``one at a time``, ``throughput`` or ``parallel``: what the row stresses."""
    scale: float
    """Divides the amount for the rate (bytes → MB)."""
    per_op: str
    """What one operation is, for the CPU-per-operation table."""
    op_scale: float
    """Divides the amount into operations (bytes → MiB)."""


MIB = float(1 << 20)
TESTS = [
    Test("seq_write", "seq write {mb}M bs=1M conv=fsync (MB/s)", "throughput", 1e6, "MiB", MIB),
    Test("seq_read_cold", "seq read cold bs=1M (MB/s)", "throughput", 1e6, "MiB", MIB),
    Test("direct_write", "seq write O_DIRECT bs=1M (MB/s)", "throughput", 1e6, "MiB", MIB),
    Test("direct_read", "seq read O_DIRECT bs=1M (MB/s)", "throughput", 1e6, "MiB", MIB),
    Test("dd_4k_direct", "dd 4k O_DIRECT sequential reads (ops/s)", SERIAL, 1, "read", 1),
    Test("fio_psync", "fio 4k randread psync direct (IOPS)", SERIAL, 1, "read", 1),
    Test("fio_libaio", "fio 4k randread libaio qd16 direct (IOPS)", "parallel", 1, "read", 1),
    Test("create", "create {files} files (ops/s)", SERIAL, 1, "file", 1),
    Test("stat_cold", "stat {files} cold (ops/s)", SERIAL, 1, "file", 1),
    Test("ls_l", "ls -l {files} entries, cold (entries/s)", SERIAL, 1, "entry", 1),
    Test("rm_rf", "rm -rf {files} files (ops/s)", SERIAL, 1, "file", 1),
]

# busybox sh, sourced by the test bed's /init with cwd on the virtio-fs mount. Times come from
# /proc/uptime read with the `read` builtin: 10 ms resolution, no fork, no request to the
# back-end. After each test, `host_step cpu NAME` lets the host sample the back-end.
WORKLOAD = r"""
set -u
MB=@MB@ FILES=@FILES@ FIO_READS=@FIO_READS@ DIRECT_4K=@DIRECT_4K@
FIO=@GUEST_BIN@/fio
# After drop_caches the FORGETs trickle out through the 128-entry hiprio queue: let them land
# before the next test rather than inside it.
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; sleep 1; }
cpu() { host_step cpu "$1" > /dev/null || { echo "BENCH-FAIL host_step cpu $1"; exit 1; }; }
fail() { echo "BENCH-FAIL $1"; cat /tmp/bench.out; exit 1; }
timed() {  # timed NAME AMOUNT CMD...: the guest's wall time for CMD, then the back-end's CPU
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
    # A fixed number of reads, not a fixed time: every back-end then serves the same requests,
    # and the workload's CPU compares the same work (a faster back-end would otherwise serve
    # more reads in the time, and pay for them).
    name=$1
    drop
    cpu "$name-setup"
    "$FIO" --name="$name" --filename=big --readonly --rw=randread --bs=4k --direct=1 \
        --ioengine="$2" --iodepth="$3" --thread --number_ios="$FIO_READS" \
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
# The file exists before dd opens it with O_DIRECT, so that the flag reaches every back-end
# through OPEN: the Rust virtiofsd drops O_DIRECT there but keeps it in CREATE, and would write
# a file dd creates past the host's page cache while the others write through it.
: > direct
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
cpu end
"""


# -- counting requests ----------------------------------------------------------------------------

# One line per request in each back-end's log: the opcode number is in every format.
REQUEST_LINE = {
    "fsd": re.compile(rb"^(\d+) \w+$", re.M),  # contrib/bench_request_log.py
    "rust": re.compile(rb"Received request: opcode=\w+ \((\d+)\)"),  # --log-level=debug
    "c": re.compile(rb"\] unique: \d+, opcode: \w+ \((\d+)\)"),  # -d
}


class RequestCounter:
    """Counts a log's request lines by opcode, reading only what was appended since last time."""

    def __init__(self, key: str, path: Path) -> None:
        self.pattern = REQUEST_LINE[key]
        self.path = path
        self.offset = 0
        self.pending = b""
        self.counts: Counter[int] = Counter()

    def update(self) -> Counter[int]:
        try:
            with self.path.open("rb") as log:
                log.seek(self.offset)
                data = log.read()
        except OSError:
            return Counter(self.counts)
        self.offset += len(data)
        data = self.pending + data
        cut = data.rfind(b"\n") + 1
        self.pending = data[cut:]
        self.counts.update(int(m.group(1)) for m in self.pattern.finditer(data[:cut]))
        return Counter(self.counts)


def opcode_name(opcode: int) -> str:
    try:
        return Opcode(opcode).name
    except ValueError:
        return f"OPCODE_{opcode}"


# -- one guest run --------------------------------------------------------------------------------


@dataclass
class Sample:
    name: str
    cpu: tuple[float, float]
    requests: Counter[int] | None


@dataclass
class Run:
    """One guest boot against one back-end (round 0: the counting pass)."""

    backend: str
    round: int
    rates: dict[str, float] = field(default_factory=dict)
    amounts: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Per test: the back-end's (user, sys) seconds spent during the test."""
    cpu_total: tuple[float, float] | None = None
    """(user, sys) seconds from the workload's start to its end."""
    requests: dict[str, dict[str, int]] = field(default_factory=dict)
    """Counting pass: per test, requests by opcode name."""
    requests_total: int | None = None
    """Counting pass: requests from the workload's start to its end."""
    chains_logged: int | None = None
    """fsd's own count of the requests of the whole guest run (its queues' stop lines)."""
    footprint_start: bc.Footprint | None = None
    footprint_end: bc.Footprint | None = None
    error: str | None = None
    wall: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)
    """The host's 1-minute load average before and after: other work on the host is noise."""


def backend_command(key: str, socket_path: Path, shared: Path, counting: bool) -> list[str]:
    argv = bc.vhost_argv(key, socket_path, shared, debug=counting)
    if key == "fsd" and counting:
        argv += ["--plugin", "bench_request_log:plugin"]
    return argv


def backend_env(key: str, request_log: Path) -> dict[str, str]:
    env = fsd_env()
    if key == "fsd":
        env["PYTHONPATH"] += os.pathsep + str(bc.REPO_ROOT / "contrib")
        env["FSD_BENCH_REQUEST_LOG"] = str(request_log)
    return env


def parse_output(run: Run, output: str) -> None:
    for line in output.splitlines():
        words = line.split()
        if len(words) == 4 and words[0] == "BENCH":
            name, seconds, amount = words[1], float(words[2]), float(words[3])
            run.amounts[name] = amount
            test = next((t for t in TESTS if t.name == name), None)
            if test is not None and seconds > 0:
                run.rates[name] = amount / test.scale / seconds


def per_test(run: Run, samples: list[Sample]) -> None:
    """Turn cumulative samples into what each test (not its setup) cost."""
    for before, after in itertools.pairwise(samples):
        if after.name.endswith("-setup") or after.name == "end":
            continue
        run.cpu[after.name] = (after.cpu[0] - before.cpu[0], after.cpu[1] - before.cpu[1])
        if before.requests is not None and after.requests is not None:
            diff = after.requests - before.requests
            run.requests[after.name] = {opcode_name(op): n for op, n in diff.most_common()}
    if len(samples) >= 2:
        first, last = samples[0], samples[-1]
        run.cpu_total = (last.cpu[0] - first.cpu[0], last.cpu[1] - first.cpu[1])
        if first.requests is not None and last.requests is not None:
            run.requests_total = sum((last.requests - first.requests).values())


def count_chains(log_path: Path) -> int | None:
    """Requests fsd served, from its info lines "queue N stopped at ...: K requests, ..."."""
    total = None
    pattern = re.compile(r"queue \d+ stopped at .*?(\d+) (?:requests|chains)")
    for match in pattern.finditer(log_path.read_text(errors="replace")):
        total = (total or 0) + int(match.group(1))
    return total


async def one_run(
    key: str,
    round_no: int,
    args: argparse.Namespace,
    image: GuestImage,
    workload: str,
    progress: Callable[[str], None],
) -> Run:
    run = Run(key, round_no)
    counting = round_no == 0
    run_dir = OUT_DIR / (f"{key}-count" if counting else f"{key}-r{round_no}")
    shutil.rmtree(run_dir, ignore_errors=True)
    shared = run_dir / "shared"
    shared.mkdir(parents=True)
    log_path = run_dir / "backend.log"
    request_log = run_dir / "requests.log"
    counter = RequestCounter(key, request_log if key == "fsd" else log_path)
    samples: list[Sample] = []
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    what = "counting" if counting else f"r{round_no}"
    with tempfile.TemporaryDirectory(prefix="fsd-bench-") as tmp:
        socket_path = Path(tmp) / "fs.sock"
        argv = backend_command(key, socket_path, shared, counting)
        env = backend_env(key, request_log)
        try:
            async with running_backend(argv, socket_path, log_path=log_path, env=env) as backend:
                pid = backend.process.pid

                async def on_step(name: str, step_args: list[str]) -> str:
                    if name != "cpu" or not step_args:
                        return f"!unknown step {name}"
                    step = step_args[0]
                    cpu = bc.tree_cpu(pid)
                    samples.append(Sample(step, cpu, counter.update() if counting else None))
                    if step == "start":
                        run.footprint_start = bc.footprint(pid)
                    elif step == "end":
                        run.footprint_end = bc.footprint(pid)
                    elif not step.endswith("-setup"):
                        progress(f"  {key} {what}: {step} done")
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
    per_test(run, samples)
    if key == "fsd":
        run.chains_logged = count_chains(log_path)
    if result.exit_status != 0:
        run.error = (
            f"{result.describe()}\n--- workload output ---\n{result.output}"
            f"--- backend log: {log_path} ---\n{tail(log_path)}"
        )
    else:
        shutil.rmtree(shared, ignore_errors=True)
    return run


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- the guest image ------------------------------------------------------------------------------


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


# -- the report -----------------------------------------------------------------------------------


class Results:
    """The runs of one benchmark, looked up by back-end and round."""

    def __init__(self, runs: list[Run], keys: list[str], rounds: int) -> None:
        self.keys = keys
        self.refs = [k for k in keys if k != "fsd"]
        self.rounds = rounds
        self.timed = {(r.backend, r.round): r for r in runs if r.round > 0 and not r.error}
        self.count = {r.backend: r for r in runs if r.round == 0 and not r.error}

    def values(self, key: str, pick: Callable[[Run], float | None]) -> list[float | None]:
        return [
            pick(self.timed[(key, i)]) if (key, i) in self.timed else None
            for i in range(1, self.rounds + 1)
        ]

    def median(self, key: str, pick: Callable[[Run], float | None]) -> float | None:
        return bc.median(self.values(key, pick))

    def ratios(self, a: str, b: str, pick: Callable[[Run], float | None]) -> str:
        """``a / b`` round by round."""
        cells = []
        for va, vb in zip(self.values(a, pick), self.values(b, pick), strict=True):
            cells.append(f"{va / vb:.2f}" if va is not None and vb else "—")
        return " ".join(cells)

    def workload_requests(self, run: Run) -> float | None:
        """The requests of a timed run's workload: each test's amount times its requests per
        operation in the counting pass, plus the requests outside tests (setup, drops)."""
        counted = self.count.get(run.backend)
        if counted is None or counted.requests_total is None:
            return None
        in_tests = sum(sum(requests.values()) for requests in counted.requests.values())
        total = float(counted.requests_total - in_tests)
        for test in TESTS:
            per_op, amount = self.requests_per_op(run.backend, test), run.amounts.get(test.name)
            if per_op is not None and amount:
                total += per_op * amount / test.op_scale
        return total

    def requests_per_op(self, key: str, test: Test) -> float | None:
        run = self.count.get(key)
        if run is None or test.name not in run.requests or not run.amounts.get(test.name):
            return None
        return sum(run.requests[test.name].values()) / (run.amounts[test.name] / test.op_scale)


def cpu_per_op(test: Test) -> Callable[[Run], float | None]:
    def pick(run: Run) -> float | None:
        cpu, amount = run.cpu.get(test.name), run.amounts.get(test.name)
        if cpu is None or not amount:
            return None
        return (cpu[0] + cpu[1]) * 1e6 / (amount / test.op_scale)

    return pick


def rates_table(res: Results, args: argparse.Namespace, has_fio: bool) -> str:
    header = ["test", "kind", *(SHORT[k] for k in res.keys)]
    header += [f"fsd/{SHORT[k]}" for k in res.refs]
    header += [f"fsd/{SHORT[k]} by round" for k in res.refs]
    rows = []
    for test in TESTS:
        if test.name.startswith("fio") and not has_fio:
            continue

        def pick(run: Run, name: str = test.name) -> float | None:
            return run.rates.get(name)

        medians = {k: res.median(k, pick) for k in res.keys}
        row = [test.label.format(mb=args.mb, files=args.files), test.kind]
        row += [bc.fmt(medians[k]) for k in res.keys]
        row += [bc.ratio(medians["fsd"], medians[k]) for k in res.refs]
        row += [res.ratios("fsd", k, pick) for k in res.refs]
        rows.append(row)
    for label, run_pick in (
        ("guest run, boot to power-off (s)", lambda r: r.wall),
        ("host load average (1 min) after the run", lambda r: r.load[1]),
    ):
        row = [label, ""] + [bc.fmt(res.median(k, run_pick)) for k in res.keys]
        rows.append(row + [""] * (2 * len(res.refs)))
    return bc.table(header, rows)


def cpu_table(res: Results) -> str:
    header = ["back-end CPU, whole workload", *(SHORT[k] for k in res.keys)]
    header += [f"fsd/{SHORT[k]}" for k in res.refs]
    header += [f"fsd/{SHORT[k]} by round" for k in res.refs]
    rows = []
    picks: list[tuple[str, Callable[[Run], float | None]]] = [
        ("**user+sys (s)**", lambda r: sum(r.cpu_total) if r.cpu_total else None),
        ("user (s)", lambda r: r.cpu_total[0] if r.cpu_total else None),
        ("sys (s)", lambda r: r.cpu_total[1] if r.cpu_total else None),
    ]
    for label, pick in picks:
        medians = {k: res.median(k, pick) for k in res.keys}
        row = [label, *(bc.fmt(medians[k]) for k in res.keys)]
        row += [bc.ratio(medians["fsd"], medians[k]) for k in res.refs]
        row += [res.ratios("fsd", k, pick) for k in res.refs]
        rows.append(row)
    if res.count:

        def workload_requests(run: Run) -> float | None:
            return res.workload_requests(run)

        def per_request(run: Run) -> float | None:
            requests = res.workload_requests(run)
            return sum(run.cpu_total) * 1e6 / requests if run.cpu_total and requests else None

        requests = {k: res.median(k, workload_requests) for k in res.keys}
        row = ["requests in the workload (from the counting pass)"]
        row += [f"{requests[k]:.0f}" if requests[k] else "—" for k in res.keys]
        rows.append(row + [""] * (2 * len(res.refs)))
        medians = {k: res.median(k, per_request) for k in res.keys}
        row = ["**CPU per request (µs)**", *(bc.fmt(medians[k]) for k in res.keys)]
        row += [bc.ratio(medians["fsd"], medians[k]) for k in res.refs]
        row += [res.ratios("fsd", k, per_request) for k in res.refs]
        rows.append(row)
    for label, mem in (
        ("RSS without guest memory at start / end (MiB)", "rss"),
        ("open fds at start / end", "fds"),
    ):

        def cell(key: str, mem: str = mem) -> str:
            run = res.timed.get((key, 1))
            if run is None or run.footprint_start is None or run.footprint_end is None:
                return "—"
            a, b = run.footprint_start, run.footprint_end
            if mem == "rss":
                return f"{a.rss_kib / 1024:.1f} / {b.rss_kib / 1024:.1f}"
            return f"{a.fds} / {b.fds}"

        rows.append([label, *(cell(k) for k in res.keys)] + [""] * (2 * len(res.refs)))
    return bc.table(header, rows)


def per_op_table(res: Results) -> str:
    header = ["test", "per", *(f"{SHORT[k]} µs/op" for k in res.keys)]
    header += [f"fsd/{SHORT[k]}" for k in res.refs]
    if res.count:
        header += [f"{SHORT[k]} req/op" for k in res.keys]
        header += [f"{SHORT[k]} µs/req" for k in res.keys]
        header += [f"fsd/{SHORT[k]} per req" for k in res.refs]
    rows = []
    for test in TESTS:
        per_op = {k: res.median(k, cpu_per_op(test)) for k in res.keys}
        if all(v is None for v in per_op.values()):
            continue
        row = [test.name, test.per_op, *(bc.fmt(per_op[k]) for k in res.keys)]
        row += [bc.ratio(per_op["fsd"], per_op[k]) for k in res.refs]
        if res.count:
            req = {k: res.requests_per_op(k, test) for k in res.keys}
            per_req: dict[str, float | None] = {}
            for k in res.keys:
                op_cost, requests = per_op[k], req[k]
                per_req[k] = op_cost / requests if op_cost is not None and requests else None
            row += [bc.fmt(req[k]) for k in res.keys]
            row += [bc.fmt(per_req[k]) for k in res.keys]
            row += [bc.ratio(per_req["fsd"], per_req[k]) for k in res.refs]
        rows.append(row)
    return bc.table(header, rows)


def mix(requests: dict[str, int] | None) -> str:
    """The opcodes that make up at least 2 % of ``requests``, most frequent first."""
    if not requests:
        return "—"
    total = sum(requests.values())
    return ", ".join(f"{op} {n}" for op, n in requests.items() if n >= total / 50)


def same_mix(a: dict[str, int], b: dict[str, int], ops: float, ops_b: float) -> bool:
    """Whether two tests sent the same opcodes per operation, within 2 % (and 2 requests)."""
    for op in set(a) | set(b):
        per_a, per_b = a.get(op, 0) / ops, b.get(op, 0) / ops_b
        if abs(per_a - per_b) * max(ops, ops_b) > 2 + 0.02 * max(a.get(op, 0), b.get(op, 0)):
            return False
    return True


def mix_table(res: Results) -> str:
    """The counting pass: requests per test and the opcodes behind them."""
    header = ["test", *(f"{SHORT[k]} requests" for k in res.keys)]
    header.append("opcodes (fsd's; another back-end's where it differs per operation)")
    rows = []
    for test in TESTS:
        counts = {k: res.count[k].requests.get(test.name) if k in res.count else None
                  for k in res.keys}  # fmt: skip
        ops = {k: res.count[k].amounts.get(test.name) if k in res.count else None
               for k in res.keys}  # fmt: skip
        base, base_ops = counts.get("fsd"), ops.get("fsd")
        if base is None or not base_ops:
            continue
        cells = [mix(base)]
        for k in res.refs:
            other, other_ops = counts[k], ops[k]
            if other is None or not other_ops or not same_mix(base, other, base_ops, other_ops):
                cells.append(f"{SHORT[k]}: {mix(other)}")
        row = [test.name, *(str(sum(c.values())) if c else "—" for c in counts.values())]
        rows.append([*row, "; ".join(cells)])
    return bc.table(header, rows)


def report(res: Results, args: argparse.Namespace, has_fio: bool) -> str:
    out = [
        "Rates (median over rounds; higher is better; fsd/X > 1: fsd was faster). "
        f"kind '{SERIAL}': the guest waits for each reply before the next request.",
        "",
        rates_table(res, args, has_fio),
        "",
        "Back-end CPU (median over rounds; fsd/X > 1: fsd used more). The process tree from "
        "/proc, 10 ms ticks."
        + (
            " Requests per operation counted in the counting pass (fsd: a plugin logging each "
            "request; Rust: --log-level=debug; C: -d) and scaled to each timed round's amounts."
            if res.count
            else ""
        ),
        "",
        cpu_table(res),
        "",
        "Back-end CPU per guest operation (µs, user+sys, median over rounds)"
        + (" and per request (per operation / requests per operation)." if res.count else "."),
        "",
        per_op_table(res),
    ]
    if res.count:
        out += ["", "Requests per test (counting pass):", "", mix_table(res)]
    fsd_counts = [
        f"r{r.round}: {r.chains_logged}"
        for (key, _), r in sorted(res.timed.items())
        if key == "fsd" and r.chains_logged
    ]
    if fsd_counts:
        out += ["", "fsd's own request count, whole guest run incl. boot: " + ", ".join(fsd_counts)]
    return "\n".join(out)


# -- main -----------------------------------------------------------------------------------------


def round_order(keys: list[str], round_no: int) -> list[str]:
    """Rotate by one each round; from round len(keys)+1 on, rotate the reversed list."""
    base = keys if (round_no - 1) // len(keys) % 2 == 0 else keys[::-1]
    shift = (round_no - 1) % len(keys)
    return base[shift:] + base[:shift]


async def main(args: argparse.Namespace) -> int:
    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    bc.ensure_deps(args.no_deps)
    keys = []
    for key in args.backends:
        missing = bc.vhost_missing(key)
        if missing:
            progress(f"!! {bc.VHOST_LABELS[key]} left out: {missing}")
        else:
            keys.append(key)
    base = GuestImage.default()
    if not base.exists():
        progress("building the guest test bed (contrib/testbed/build.sh)")
        base = build_testbed()
    extras = guest_extras(not args.no_fio)
    has_fio = bool(extras)
    if not has_fio and not args.no_fio:
        progress("no fio on the host (contrib/bench-deps.sh installs it): fio rows skipped")
    image = bench_image(base, extras)
    workload = (
        WORKLOAD.replace("@MB@", str(args.mb))
        .replace("@FILES@", str(args.files))
        .replace("@FIO_READS@", str(args.fio_reads))
        .replace("@DIRECT_4K@", str(args.direct_4k))
        .replace("@GUEST_BIN@", GUEST_BIN)
    )
    runs: list[Run] = []
    started = time.monotonic()
    load_at_start = os.getloadavg()
    schedule = [(i, k) for i in range(1, args.rounds + 1) for k in round_order(keys, i)]
    if args.count:
        schedule += [(0, k) for k in keys]
    for round_no, key in schedule:
        progress(f"round {round_no}: {key}" if round_no else f"counting pass: {key}")
        run = await one_run(key, round_no, args, image, workload, progress)
        runs.append(run)
        if run.error:
            progress(f"!! {key} round {round_no} FAILED:\n{run.error}")
        else:
            progress(f"  {key}: guest run {run.wall:.1f} s")
    elapsed = time.monotonic() - started
    print(
        f"fsd guest benchmark under TCG (-smp 1, guest 1G), {args.rounds} round(s) rotating "
        f"the order, file {args.mb} MiB, {args.files} files"
        + (f", fio {args.fio_reads} reads per job" if has_fio else ", no fio")
        + (", plus a counting pass" if args.count else "")
        + f"; {elapsed / 60:.0f} min in all."
    )
    for key in keys:
        argv = " ".join(bc.vhost_argv(key, Path("S"), Path("D")))
        print(f"- {bc.VHOST_LABELS[key]}: {bc.vhost_version(key)}: `{argv}`")
    print(f"- machine: {bc.machine()} (load average at the start: {load_at_start[0]:.2f})")
    print()
    print(report(Results(runs, keys, args.rounds), args, has_fio))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "results.json").write_text(json.dumps([asdict(r) for r in runs], indent=1))
    failed = [r for r in runs if r.error]
    for r in failed:
        print(f"\n!! {r.backend} round {r.round} failed; see {OUT_DIR}/")
    # A reference daemon's counting pass (its debug log) only gives requests per operation;
    # its failure leaves those out of the tables, not the measurement (its timed rounds ran).
    return 1 if any(r.round or r.backend == "fsd" for r in failed) else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 4, quick 1)")
    parser.add_argument("--quick", action="store_true", help="1 round, 64 MiB, short fio")
    parser.add_argument("--mb", type=int, default=None, help="file size in MiB (default 256)")
    parser.add_argument("--files", type=int, default=2000, help="files in the metadata tests")
    parser.add_argument(
        "--fio-reads", type=int, default=None, help="4k reads per fio job (default: the file's)"
    )
    parser.add_argument("--direct-4k", type=int, default=10000, help="4k O_DIRECT dd reads")
    parser.add_argument("--no-fio", action="store_true", help="do not copy fio into the guest")
    parser.add_argument(
        "--backends",
        default=",".join(bc.VHOST_BACKENDS),
        help="comma-separated, from fsd,rust,c (default: all three)",
    )
    parser.add_argument(
        "--count",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the counting pass (default: on, off with --quick)",
    )
    parser.add_argument("--no-deps", action="store_true", help="do not run bench-deps.sh")
    parser.add_argument("--time-limit", type=float, default=300.0, help="per guest run, s")
    args = parser.parse_args(argv)
    args.backends = [k for k in args.backends.split(",") if k]
    unknown = set(args.backends) - set(bc.VHOST_BACKENDS)
    if unknown or "fsd" not in args.backends:
        parser.error(f"--backends: fsd and any of rust, c (not {', '.join(sorted(unknown))})")
    if args.rounds is None:
        args.rounds = 1 if args.quick else 4
    if args.mb is None:
        args.mb = 64 if args.quick else 256
    if args.fio_reads is None:
        args.fio_reads = args.mb * 256  # every 4 KiB block of the file once, in random order
    if args.count is None:
        args.count = not args.quick
    return args


if __name__ == "__main__":
    sys.exit(trio.run(main, parse_args()))
