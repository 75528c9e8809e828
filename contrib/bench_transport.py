"""Transport benchmark without a guest: the scripted front-end against fsd and the references.

Every back-end (fsd, the Rust virtiofsd, QEMU's C virtiofsd) gets the same QEMU-like
vhost-user session (memfd guest memory, eventfds, indirect descriptor chains shaped like
Linux's virtio_fs) and the same serial requests: GETATTR, LOOKUP, a 4 KiB READ and a
124-page (496 KiB) READ. Each back-end serves requests on its queue thread
(``--thread-pool-size=0`` for the references, as fsd does). The table shows the round trip
per request (client wall time: the back-end's wake-up, ring walk, FUSE work and signal) and
the back-end's own CPU time per request (schedstat of all its threads), medians over rounds
that alternate the back-ends' order.

    .venv/bin/python contrib/bench_transport.py [--requests N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import bench_common as bc

from fsd.testing import fuse_requests as fr
from fsd.testing.frontend import VhostUserFrontend
from fsd.testing.guest import fsd_env, unix_socket_listening

PAGE = 4096
BIG_PAGES = 124


class Session:
    """One vhost-user connection with the FUSE session initialised; serial requests."""

    def __init__(self, fe: VhostUserFrontend) -> None:
        self.fe = fe
        self.unique = 100

    def call(self, data: bytes, reply_pages: list[int] | None = None) -> fr.Reply:
        q = self.fe.queues[1]
        head = q.add_request(data, reply_pages or [PAGE])
        self.fe.kick(1)
        [(used, length)] = self.fe.wait_used(1)
        assert used == head
        return fr.parse_reply(q.written(head, length))

    def next(self) -> int:
        self.unique += 1
        return self.unique


@contextmanager
def vhost_session(
    key: str, shared: Path, *, log_path: Path | None = None
) -> Iterator[tuple[Session, subprocess.Popen[bytes]]]:
    """Start back-end ``key`` on ``shared``, connect, INIT; stop it on exit."""
    with tempfile.TemporaryDirectory(prefix="fsd-bench-") as tmp:
        sock = Path(tmp) / "vhost.sock"
        log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
        proc = subprocess.Popen(
            bc.vhost_argv(key, sock, shared, serial=True),
            stdout=log,
            stderr=log,
            env=fsd_env(),
        )
        try:
            deadline = time.monotonic() + 20
            while not unix_socket_listening(sock):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{bc.VHOST_LABELS[key]} did not start")
                time.sleep(0.02)
            fe = VhostUserFrontend(str(sock))
            fe.start()
            session = Session(fe)
            try:
                init = session.call(fr.init_request(session.next()))
            except TimeoutError as exc:
                raise NoInitReply(f"{bc.VHOST_LABELS[key]}: {exc}") from None
            assert init.error == 0, f"INIT: {init.error}"
            yield session, proc
            fe.stop()
            fe.close()
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if log_path:
                log.close()  # type: ignore[union-attr]


class NoInitReply(Exception):
    """The back-end never answered INIT (the Rust virtiofsd, now and then, here)."""


def run_backend(key: str, shared: Path, requests: int) -> dict[str, tuple[float, float]]:
    """Per request label: (wall µs, back-end CPU µs) per request."""
    with vhost_session(key, shared) as (s, proc):
        entry = fr.parse_entry(s.call(fr.lookup(s.next(), 1, "data.bin")).payload)
        fh, _ = fr.parse_open(s.call(fr.open_(s.next(), entry.nodeid)).payload)
        cases: dict[str, Callable[[], fr.Reply]] = {
            "GETATTR": lambda: s.call(fr.getattr(s.next(), entry.nodeid)),
            "LOOKUP (hit)": lambda: s.call(fr.lookup(s.next(), 1, "data.bin")),
            "READ 4 KiB": lambda: s.call(fr.read(s.next(), entry.nodeid, fh, 0, PAGE), [16, PAGE]),
            f"READ {BIG_PAGES * 4} KiB": lambda: s.call(
                fr.read(s.next(), entry.nodeid, fh, 0, BIG_PAGES * PAGE),
                [16] + [PAGE] * BIG_PAGES,
            ),
        }
        results: dict[str, tuple[float, float]] = {}
        for label, case in cases.items():
            count = requests // 4 if label.startswith(f"READ {BIG_PAGES * 4}") else requests
            for _ in range(20):
                case()
            cpu0, t0 = bc.threads_cpu_ns(proc.pid), time.perf_counter()
            for _ in range(count):
                reply = case()
                assert reply.error == 0, (label, reply.error)
            wall = (time.perf_counter() - t0) / count
            cpu = (bc.threads_cpu_ns(proc.pid) - cpu0) / 1e9 / count
            results[label] = (wall * 1e6, cpu * 1e6)
        # LOOKUP took a reference per call: the session ends without FORGETs, as at unmount.
        return results


def report(runs: dict[str, list[dict[str, tuple[float, float]]]], args: argparse.Namespace) -> str:
    keys = list(runs)
    labels = list(runs["fsd"][0])
    refs = [k for k in keys if k != "fsd"]
    short = {"fsd": "fsd", "rust": "Rust", "c": "C"}
    header = ["request"]
    header += [f"{short[k]} µs/req" for k in keys]
    header += [f"{short[k]} CPU µs/req" for k in keys]
    header += [f"CPU fsd/{short[k]}" for k in refs]
    header += [f"wall fsd/{short[k]}" for k in refs]
    rows = []
    for label in labels:
        wall = {k: bc.median([r[label][0] for r in runs[k]]) for k in keys}
        cpu = {k: bc.median([r[label][1] for r in runs[k]]) for k in keys}
        row = [label]
        row += [bc.fmt(wall[k]) for k in keys]
        row += [bc.fmt(cpu[k]) for k in keys]
        row += [bc.ratio(cpu["fsd"], cpu[k]) for k in refs]
        row += [bc.ratio(wall["fsd"], wall[k]) for k in refs]
        rows.append(row)
    lines = [
        f"transport round trips, scripted front-end, {args.rounds} round(s) rotating the order, "
        f"{args.requests} serial requests per row ({args.requests // 4} for the 496 KiB READ), "
        "median of rounds; ratios > 1 mean fsd costs more",
        "",
        bc.table(header, rows),
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 round of 500 requests")
    parser.add_argument("--no-deps", action="store_true", help="do not run bench-deps.sh")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.requests = 1, 500
    bc.ensure_deps(args.no_deps)
    keys = []
    for key in bc.VHOST_BACKENDS:
        missing = bc.vhost_missing(key)
        if missing:
            print(f"!! {bc.VHOST_LABELS[key]} left out: {missing}", file=sys.stderr)
        else:
            keys.append(key)
    with tempfile.TemporaryDirectory(prefix="fsd-bench-share-") as share:
        shared = Path(share)
        (shared / "data.bin").write_bytes(os.urandom(BIG_PAGES * PAGE))
        runs: dict[str, list[dict[str, tuple[float, float]]]] = {k: [] for k in keys}
        restarts: list[str] = []
        for round_no in range(args.rounds):
            # Rotate the order round by round: no back-end always runs first or last.
            shift = round_no % len(keys)
            for key in keys[shift:] + keys[:shift]:
                print(f"round {round_no + 1}: {bc.VHOST_LABELS[key]}", file=sys.stderr)
                try:
                    runs[key].append(run_backend(key, shared, args.requests))
                except NoInitReply as exc:  # once more, with a fresh process
                    print(f"!! {exc}; started again", file=sys.stderr)
                    restarts.append(key)
                    runs[key].append(run_backend(key, shared, args.requests))
    if restarts:
        print(f"(no INIT reply, started again: {', '.join(restarts)})\n")
    print(report(runs, args))
    print()
    print("; ".join(f"{bc.VHOST_LABELS[k]}: {bc.vhost_version(k)}" for k in keys))
    print(f"machine: {bc.machine()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
