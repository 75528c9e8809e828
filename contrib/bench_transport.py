"""Transport benchmark without a guest: the scripted front-end against fsd and the reference.

Both back-ends get the same QEMU-like vhost-user session (memfd guest memory, eventfds,
indirect descriptor chains shaped like Linux's virtio_fs), and the same serial requests:
GETATTR, LOOKUP, 4 KiB READ and a 124-page (496 KiB) READ. The table shows the round trip
per request (client wall time, the back-end's wake-up, ring walk, FUSE work and signal
included) and the back-end's own CPU time per request, read from /proc/PID/stat.

    .venv/bin/python contrib/bench_transport.py [--requests N] [--rounds R]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from fsd.testing import fuse_requests as fr  # noqa: E402
from fsd.testing.frontend import VhostUserFrontend  # noqa: E402
from fsd.testing.guest import unix_socket_listening  # noqa: E402

REFERENCE = "/usr/lib/qemu/virtiofsd"
PAGE = 4096
BIG_PAGES = 124


def backend_argv(name: str, socket_path: Path, shared: Path) -> list[str]:
    if name == "fsd":
        return [sys.executable, "-m", "fsd", "serve", "--socket-path", str(socket_path),
                "--shared-dir", str(shared), "--log-level", "warning"]  # fmt: skip
    return [REFERENCE, f"--socket-path={socket_path}", "-o", f"source={shared}",
            "-o", "cache=auto", "-o", "sandbox=chroot", "--thread-pool-size=0"]  # fmt: skip


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` (schedstat: nanoseconds, not 10 ms ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


class Session:
    def __init__(self, fe: VhostUserFrontend) -> None:
        self.fe = fe
        self.unique = 100

    def call(self, data: bytes, reply_pages: list[int] | None = None) -> fr.Reply:
        q = self.fe.queues[1]
        sizes = reply_pages or [PAGE]
        head = q.add_request(data, sizes)
        self.fe.kick(1)
        [(used, length)] = self.fe.wait_used(1)
        assert used == head
        return fr.parse_reply(q.written(head, length))

    def next(self) -> int:
        self.unique += 1
        return self.unique


def run_backend(name: str, shared: Path, requests: int) -> dict[str, tuple[float, float]]:
    with tempfile.TemporaryDirectory(prefix="fsd-bench-") as tmp:
        sock = Path(tmp) / "vhost.sock"
        proc = subprocess.Popen(backend_argv(name, sock, shared), stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while not unix_socket_listening(sock):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{name} did not start")
                time.sleep(0.02)
            fe = VhostUserFrontend(str(sock))
            fe.start()
            s = Session(fe)
            s.call(fr.init_request(s.next()))
            entry = fr.parse_entry(s.call(fr.lookup(s.next(), 1, "data.bin")).payload)
            opened = s.call(fr.open_(s.next(), entry.nodeid))
            fh, _ = fr.parse_open(opened.payload)
            cases: dict[str, Callable[[], fr.Reply]] = {
                "GETATTR": lambda: s.call(fr.getattr(s.next(), entry.nodeid)),
                "LOOKUP (hit)": lambda: s.call(fr.lookup(s.next(), 1, "data.bin")),
                "READ 4 KiB": lambda: s.call(
                    fr.read(s.next(), entry.nodeid, fh, 0, PAGE), [16, PAGE]
                ),
                f"READ {BIG_PAGES * 4} KiB": lambda: s.call(
                    fr.read(s.next(), entry.nodeid, fh, 0, BIG_PAGES * PAGE),
                    [16] + [PAGE] * BIG_PAGES,
                ),
            }
            results: dict[str, tuple[float, float]] = {}
            for label, case in cases.items():
                count = requests if "KiB" not in label or "4 KiB" in label else requests // 4
                for _ in range(20):
                    case()
                cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
                for _ in range(count):
                    reply = case()
                    assert reply.error == 0, (label, reply.error)
                wall = (time.perf_counter() - t0) / count
                cpu = (cpu_seconds(proc.pid) - cpu0) / count
                results[label] = (wall * 1e6, cpu * 1e6)
            fe.stop()
            fe.close()
            proc.wait(timeout=10)
            return results
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    backends = ["fsd"] + (["virtiofsd (C, QEMU 7.2)"] if os.path.exists(REFERENCE) else [])
    with tempfile.TemporaryDirectory(prefix="fsd-bench-share-") as share:
        shared = Path(share)
        (shared / "data.bin").write_bytes(os.urandom(BIG_PAGES * PAGE))
        runs: dict[str, list[dict[str, tuple[float, float]]]] = {b: [] for b in backends}
        for _ in range(args.rounds):
            for name in backends:  # alternate back-ends round by round
                runs[name].append(run_backend(name.split()[0], shared, args.requests))
    labels = list(runs["fsd"][0])
    print(f"transport round trips, scripted front-end, {args.rounds} rounds alternating, "
          f"{args.requests} serial requests per row (median of rounds)")  # fmt: skip
    header = "| request | " + " | ".join(f"{b} µs/req | {b} CPU µs/req" for b in backends)
    if len(backends) == 2:
        header += " | wall ratio fsd/ref | CPU ratio fsd/ref"
    print(header + " |")
    print("|" + "---|" * (1 + 2 * len(backends) + (2 if len(backends) == 2 else 0)))
    for label in labels:
        cells = [label]
        med: dict[str, tuple[float, float]] = {}
        for b in backends:
            wall = statistics.median(r[label][0] for r in runs[b])
            cpu = statistics.median(r[label][1] for r in runs[b])
            med[b] = (wall, cpu)
            cells += [f"{wall:.1f}", f"{cpu:.1f}"]
        if len(backends) == 2:
            (fw, fc), (rw, rc) = med[backends[0]], med[backends[1]]
            cells += [f"{fw / rw:.2f}", f"{fc / rc:.2f}" if rc else "n/a"]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
