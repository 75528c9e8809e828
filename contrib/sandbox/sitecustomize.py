"""Measurement hook for contrib/measure-sandbox.py (put on PYTHONPATH by that script only).

In every ``fsd`` daemon process (``python -m fsd ...``, ``python -m fsd.daemon.devfuse``, the
``fsd`` console scripts) it wraps ``trio.run``, the point before which the command line will
enter the sandbox, so that what is recorded is what the sandboxed daemon does:

- ``FSD_MEASURE=strace``: attach ``strace -f -c`` to the process (all its threads, from here
  to its exit); the summary table lands in ``$FSD_MEASURE_DIR/strace.<pid>``;
- ``FSD_MEASURE=verify``: install fsd's own seccomp filter in ``log`` mode; calls outside the
  allowlist then show up in the kernel log (audit type 1326), which the script reads;

and in both, record the modules first imported after that point in
``$FSD_MEASURE_DIR/imports.<pid>`` (what chroot mode must import beforehand).
"""

from __future__ import annotations

import os
import sys


def _daemon_command() -> str | None:
    """``serve`` or ``mount`` for an fsd daemon process, None for anything else."""
    argv: list[str] = list(getattr(sys, "orig_argv", sys.argv))
    if "--help" in argv or "-h" in argv or "--print-capabilities" in argv:
        return None
    name = os.path.basename(argv[0])
    if name == "fsd-vhost-user":
        return "serve"
    if name == "fsd" and len(argv) > 1 and argv[1] in ("serve", "mount"):
        return argv[1]
    for i, arg in enumerate(argv[:-1]):
        if arg == "-m" and argv[i + 1] == "fsd.daemon.devfuse":
            return "mount"
        if arg == "-m" and argv[i + 1] == "fsd" and argv[i + 2 : i + 3] in (["serve"], ["mount"]):
            return argv[i + 2]
    return None


def _attach_strace(out_dir: str) -> None:
    import ctypes
    import time

    pid = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(0x59616D61, ctypes.c_ulong(-1 & 0xFFFFFFFFFFFFFFFF), 0, 0, 0)  # PR_SET_PTRACER_ANY
    # Through a shell that exits at once, never waited for: a wait here could be under way
    # when strace attaches, and be counted as a call of the daemon's.
    command = (
        f"strace -f -c -U name,calls,errors -o {out_dir}/strace.{pid} -p {pid}"
        " </dev/null >/dev/null 2>&1 &"
    )
    os.posix_spawnp("sh", ["sh", "-c", command], dict(os.environ))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open("/proc/self/status") as status:
            traced = not any(line.split() == ["TracerPid:", "0"] for line in status)
        if traced:
            return
        time.sleep(0.01)


def _record_imports(out_dir: str) -> None:
    before = set(sys.modules)
    path = f"{out_dir}/imports.{os.getpid()}"

    def hook(event: str, args: tuple[object, ...]) -> None:
        if event == "import" and isinstance(args[0], str) and args[0] not in before:
            before.add(args[0])
            with open(path, "a") as f:
                f.write(args[0] + "\n")

    sys.addaudithook(hook)


def _install() -> None:
    mode = os.environ.get("FSD_MEASURE")
    out_dir = os.environ.get("FSD_MEASURE_DIR")
    command = _daemon_command()
    if mode not in ("strace", "verify") or not out_dir or command is None:
        return
    import trio

    real_run = trio.run

    def run(*args: object, **kwargs: object) -> object:
        with open(f"{out_dir}/command.{os.getpid()}", "w") as f:
            f.write(command)
        with open(f"{out_dir}/argv.{os.getpid()}", "w") as f:
            f.write(" ".join(getattr(sys, "orig_argv", sys.argv)))
        if mode == "strace":
            _attach_strace(out_dir)
        else:
            from fsd.sandbox import SeccompAction
            from fsd.sandbox.seccomp import install_filter
            from fsd.sandbox.syscalls import allowed

            install_filter(SeccompAction.LOG, allowed(command))
        _record_imports(out_dir)
        return real_run(*args, **kwargs)  # type: ignore[arg-type]

    trio.run = run  # type: ignore[assignment]


try:
    _install()
except Exception as exc:  # never break the process being measured
    print(f"fsd measurement hook: {exc}", file=sys.stderr)
