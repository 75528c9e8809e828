"""What the benchmarks share: where the peers are, CPU and memory read from /proc, tables.

The peers (the Rust virtiofsd from Debian trixie, libfuse's passthrough_hp, pyfuse3's example
passthrough) are fetched and built into build/bench-deps/ by contrib/bench-deps.sh; QEMU's C
virtiofsd is the host's own /usr/lib/qemu/virtiofsd. Nothing here is installed system-wide.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# Run as scripts, the benchmarks have contrib/ on sys.path, not the checkout holding fsd.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
DEPS_SCRIPT = REPO_ROOT / "contrib" / "bench-deps.sh"
DEPS_DIR = Path(os.environ.get("FSD_BENCH_DEPS_DIR", REPO_ROOT / "build" / "bench-deps"))
C_VIRTIOFSD = Path("/usr/lib/qemu/virtiofsd")
RUST_VIRTIOFSD = DEPS_DIR / "bin" / "virtiofsd-rust"
PASSTHROUGH_HP = DEPS_DIR / "bin" / "passthrough_hp"
PYFUSE3_PASSTHROUGH = DEPS_DIR / "bin" / "pyfuse3-passthrough"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def ensure_deps(skip: bool = False) -> None:
    """Run contrib/bench-deps.sh (well under a second once everything is there).

    A failure is reported, not fatal: each benchmark then leaves out the peers it lacks.
    """
    if skip:
        return
    result = subprocess.run(["bash", str(DEPS_SCRIPT)], check=False)
    if result.returncode != 0:
        print(
            f"!! {DEPS_SCRIPT.name} failed (exit {result.returncode}): missing peers are "
            "left out of the tables",
            file=sys.stderr,
        )


def version_of(argv: Sequence[str]) -> str:
    """The first line a program prints for ``--version``, or ``"?"``."""
    try:
        result = subprocess.run(
            [*argv, "--version"], capture_output=True, text=True, check=False, timeout=10
        )
    except OSError:
        return "?"
    lines = (result.stdout or result.stderr).splitlines()
    return lines[0].strip() if lines else "?"


# -- CPU and memory of a daemon, from /proc ------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (QEMU's C virtiofsd forks a sandboxed child that works)."""
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
    """(user, sys) seconds of a process tree, all threads and reaped children included.

    Resolution 1/CLK_TCK (10 ms): for whole workloads, not single requests.
    """
    user = system = 0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is the state (field 3); utime, stime, cutime, cstime are fields 14-17.
        user += int(fields[11]) + int(fields[13])
        system += int(fields[12]) + int(fields[14])
    return user / CLK_TCK, system / CLK_TCK


def threads_cpu_ns(pid: int) -> int:
    """CPU nanoseconds of the live threads of ``pid`` and its descendants (schedstat: exact,
    not 10 ms ticks). The tree, because a sandboxed daemon serves from a child: fsd's and
    the C virtiofsd's supervisors fork the server."""
    total = 0
    for member in process_tree(pid):
        try:
            tasks = list(Path(f"/proc/{member}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total


@dataclass(frozen=True)
class Footprint:
    """A daemon's memory without the guest's (the memfd it maps) and its open fds."""

    rss_kib: int
    """Resident KiB of every mapping except ``/memfd:`` ones (guest RAM shared by the VMM)."""
    guest_rss_kib: int
    """Resident KiB of the ``/memfd:`` mappings: guest memory the daemon touched."""
    fds: int

    def describe(self) -> str:
        return f"RSS {self.rss_kib / 1024:.1f} MiB, {self.fds} fds"


def footprint(pid: int) -> Footprint:
    """Read /proc/PID/smaps (summed over the process tree) and count /proc/PID/fd."""
    own = guest = fds = 0
    for member in process_tree(pid):
        try:
            smaps = Path(f"/proc/{member}/smaps").read_text()
            fds += len(os.listdir(f"/proc/{member}/fd"))
        except OSError:
            continue
        in_guest = False
        for line in smaps.splitlines():
            head = line.split(maxsplit=6)
            if head and "-" in head[0] and not head[0].endswith(":"):
                # A mapping header: "start-end perms offset dev inode [path]".
                in_guest = len(head) > 5 and head[5].startswith("/memfd:")
            elif head and head[0] == "Rss:":
                if in_guest:
                    guest += int(head[1])
                else:
                    own += int(head[1])
    return Footprint(own, guest, fds)


# -- the machine and the tables ------------------------------------------------------------------


def machine() -> str:
    """One line: CPU, cores, kernel, QEMU, Python, and the load when it was asked."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    qemu = version_of(["qemu-system-x86_64"])
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}; {qemu}; "
        f"Python {platform.python_version()}; load average {load}"
    )


def fmt(value: float | None) -> str:
    """Three significant figures or so; an em dash for a missing value."""
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(a: float | None, b: float | None) -> str:
    """``a / b`` to two decimals, or an em dash."""
    return f"{a / b:.2f}" if a is not None and b else "—"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


# -- the vhost-user back-ends --------------------------------------------------------------------

VHOST_BACKENDS = ("fsd", "rust", "c")
VHOST_LABELS = {"fsd": "fsd", "rust": "Rust virtiofsd", "c": "C virtiofsd"}


def vhost_missing(key: str) -> str | None:
    """Why back-end ``key`` cannot run here, or None."""
    if key == "rust" and not RUST_VIRTIOFSD.exists():
        return f"no {RUST_VIRTIOFSD} (contrib/bench-deps.sh did not finish)"
    if key == "c" and not C_VIRTIOFSD.exists():
        return f"no {C_VIRTIOFSD} (Debian 12's qemu-system-common)"
    return None


def vhost_version(key: str) -> str:
    if key == "fsd":

        def git(*args: str) -> str:
            return subprocess.run(
                ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=False
            ).stdout.strip()

        # The last commit that changed fsd/ says which daemon ran; HEAD may only touch contrib/.
        code = git("log", "-1", "--format=%h", "--", "fsd") or "?"
        head = git("rev-parse", "--short", "HEAD") or "?"
        changed = git("status", "--porcelain", "--", "fsd")
        dirty = " + uncommitted changes in fsd/" if changed else ""
        return f"fsd/ as of {code} (checkout at {head}{dirty})"
    return version_of([str(RUST_VIRTIOFSD if key == "rust" else C_VIRTIOFSD)])


def vhost_argv(
    key: str,
    socket_path: Path,
    shared: Path,
    *,
    serial: bool = False,
    debug: bool = False,
) -> list[str]:
    """The command line of back-end ``key`` serving ``shared`` on ``socket_path``.

    Every back-end uses cache=auto. ``serial``: requests served on the queue's own thread, as
    fsd does (``--thread-pool-size=0``; the C virtiofsd's default pool has 64 threads, the
    Rust one's has none); otherwise each reference runs with its defaults. ``debug``: the
    references log one line per request (for counting requests; slower). The C virtiofsd then
    runs without its pool: with ``-d`` and the pool it once stopped answering under fio's 16
    parallel reads (its log ended mid-run; without ``-d`` it never did).
    """
    if key == "fsd":
        argv = [sys.executable, "-m", "fsd", "serve", "--socket-path", str(socket_path),
                "--shared-dir", str(shared)]  # fmt: skip
        # fsd runs with its defaults (the namespace sandbox, seccomp kill); FSD_BENCH_ARGS
        # adds options, e.g. "--sandbox none --seccomp none" to see what the sandbox costs.
        argv += os.environ.get("FSD_BENCH_ARGS", "").split()
        return [*argv, "--log-level", "warning"] if serial else argv
    if key == "rust":
        # --sandbox=none, as the Rust virtiofsd must run here (its default, namespace, forks
        # a child that does the work behind a pid namespace); its seccomp filter stays on.
        argv = [str(RUST_VIRTIOFSD), f"--socket-path={socket_path}", f"--shared-dir={shared}",
                "--cache=auto", "--sandbox=none"]  # fmt: skip
        if serial:
            argv.append("--thread-pool-size=0")
        return [*argv, "--log-level=debug"] if debug else argv
    argv = [str(C_VIRTIOFSD), f"--socket-path={socket_path}", "-o", f"source={shared}",
            "-o", "cache=auto"]  # fmt: skip
    if serial:
        argv += ["-o", "sandbox=chroot", "--thread-pool-size=0"]
    elif debug:
        argv.append("--thread-pool-size=0")
    return [*argv, "-d"] if debug else argv
