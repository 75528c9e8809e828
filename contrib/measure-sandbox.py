#!/usr/bin/env python3
"""Measure what a sandboxed fsd needs: its system calls (the seccomp allowlist in
fsd/sandbox/syscalls.py) and the modules it imports late (fsd/sandbox/preload.py).

    .venv/bin/python contrib/measure-sandbox.py [--write] [PYTEST ARGS...]
    .venv/bin/python contrib/measure-sandbox.py --verify [PYTEST ARGS...]

Runs the test suite (by default all of it, guest tests included: every fsd daemon the tests
start, ``fsd serve`` and ``fsd mount``, with plugins, over real guests) with
contrib/sandbox/sitecustomize.py on PYTHONPATH. That hook attaches ``strace -f -c`` to each
daemon just before ``trio.run``, where the command line enters the sandbox, and records the
modules imported after that point. The union over all daemons is printed, and with
``--write`` becomes the lists in fsd/sandbox/. The test outcome does not matter (a test that
kills a daemon still shows what it called), but a run that starts no daemon is an error.

``--verify`` instead installs fsd's own filter in log mode in each daemon and reports the
calls the kernel logged (audit type 1326 in dmesg) as outside the list: nothing, when the list
is complete for the workloads run. Needs root (strace of other users' daemons, dmesg).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOOK_DIR = REPO / "contrib" / "sandbox"
SYSCALLS = REPO / "fsd" / "sandbox" / "syscalls.py"
PRELOAD = REPO / "fsd" / "sandbox" / "preload.py"


def run_suite(mode: str, out_dir: str, pytest_args: list[str]) -> int:
    env = dict(os.environ)
    env["FSD_MEASURE"] = mode
    env["FSD_MEASURE_DIR"] = out_dir
    env["PYTHONPATH"] = os.pathsep.join(
        [str(HOOK_DIR), str(REPO), *filter(None, [env.get("PYTHONPATH")])]
    )
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args]
    print("+", " ".join(command), file=sys.stderr)
    return subprocess.run(command, cwd=REPO, env=env).returncode


def strace_calls(out_dir: str) -> dict[str, set[str]]:
    """The system calls of each daemon command (serve, mount), over all its processes."""
    names: dict[str, set[str]] = {}
    for path in sorted(Path(out_dir).glob("strace.*")):
        pid = path.name.split(".", 1)[1]
        command = (Path(out_dir) / f"command.{pid}").read_text()
        calls = names.setdefault(command, set())
        for line in path.read_text().splitlines():
            fields = line.split()
            if fields[1:2] == ["calls"] or not fields:
                continue  # the header
            if re.fullmatch(r"[a-z_][a-z0-9_]*", fields[0]) and fields[0] != "total":
                calls.add(fields[0])
    return names


def late_imports(out_dir: str) -> set[str]:
    names: set[str] = set()
    for path in Path(out_dir).glob("imports.*"):
        names.update(path.read_text().split())
    return names


def audit_records(lines: list[str]) -> set[str]:
    """System calls seccomp logged (audit type 1326) in these kernel log lines."""
    from fsd.sandbox.seccomp import syscall_name

    names = set()
    for line in lines:
        match = re.search(r"type=1326 .*comm=\"([^\"]*)\".* syscall=(\d+)", line)
        if match:
            names.add(f"{syscall_name(int(match.group(2)))} (comm {match.group(1)})")
    return names


def replace_block(path: Path, block: str, lines: list[str]) -> None:
    begin, end = f"# BEGIN {block}\n", f"# END {block}\n"
    text = path.read_text()
    start = text.index(begin) + len(begin)
    stop = text.rindex("\n", 0, text.index(end)) + 1  # keep the END line's indentation
    path.write_text(text[:start] + "".join(lines) + text[stop:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="add to the lists in fsd/sandbox/")
    parser.add_argument("--replace", action="store_true", help="with --write: drop old entries")
    parser.add_argument("--keep", metavar="DIR", help="leave each daemon's records in DIR")
    parser.add_argument("--verify", action="store_true", help="check the list in log mode")
    args, pytest_args = parser.parse_known_args()
    with tempfile.TemporaryDirectory(prefix="fsd-measure-") as scratch:
        out_dir = args.keep or scratch
        os.makedirs(out_dir, exist_ok=True)
        if args.verify:
            from fsd.testing.kmsg import KernelLogFollower

            with KernelLogFollower() as kernel_log:
                run_suite("verify", out_dir, pytest_args)
                missing = audit_records(kernel_log.new_lines())
            print(f"calls outside the allowlist: {', '.join(sorted(missing)) or 'none'}")
            return 1 if missing else 0
        status = run_suite("strace", out_dir, pytest_args)
        calls = strace_calls(out_dir)
        imports = late_imports(out_dir)
        daemons = len(list(Path(out_dir).glob("strace.*")))
    if not daemons:
        print("no fsd daemon was measured", file=sys.stderr)
        return 1
    print(f"{daemons} daemons measured (pytest exit status {status})")
    for command in sorted(calls):
        print(f"fsd {command} ({len(calls[command])}): {' '.join(sorted(calls[command]))}")
    print(f"late imports ({len(imports)}): {' '.join(sorted(imports))}")
    if args.write:
        from fsd.sandbox import syscalls
        from fsd.sandbox.preload import LATE_IMPORTS

        for command, block, old in (
            ("serve", "SERVE", syscalls.SERVE),
            ("mount", "MOUNT", syscalls.MOUNT),
        ):
            names = calls.get(command, set()) | (set() if args.replace else set(old))
            replace_block(SYSCALLS, block, [f'        "{n}",\n' for n in sorted(names)])
        names = imports | (set() if args.replace else set(LATE_IMPORTS))
        replace_block(PRELOAD, "MEASURED", [f'    "{n}",\n' for n in sorted(names)])
        print(f"wrote {SYSCALLS.relative_to(REPO)} and {PRELOAD.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
