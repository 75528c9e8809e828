"""Measurement hook for contrib/measure-sandbox.py (put on PYTHONPATH by that script only).

In every ``fsd`` daemon process (``python -m fsd ...``, the
``fsd`` console scripts) it wraps :func:`fsd.sandbox.seccomp.install_filter`, which
:func:`fsd.sandbox.enter_sandbox` calls last, in the sandboxed server, once everything else
is set up: what is recorded from there on is what the seccomp filter has to allow.

- ``FSD_MEASURE=strace``: no filter is installed, and ``strace -f -c`` is attached to the
  server (all its threads, from there to its exit); the summary table lands in
  ``$FSD_MEASURE_DIR/strace.<pid>``. Inside
  the sandbox there is no strace to run and no /proc of other processes, so a small helper
  started now, outside, waits for the server's word, attaches strace to it (the launcher
  itself, or in namespace and chroot modes its one child) and answers once attached;
- ``FSD_MEASURE=verify``: fsd's own filter is installed in ``log`` mode whatever the daemon
  asked for; calls outside the allowlist then show up in the kernel log (audit type 1326),
  which the script reads;

and in both, record the modules first imported after that point in
``$FSD_MEASURE_DIR/imports.<pid>`` (what chroot mode must import beforehand). Files are
opened now, by the launcher: the measurement directory does not exist in the sandbox.
``<pid>`` is the launcher's.
"""

from __future__ import annotations

import os
import sys

_TRACER = r"""
import os, subprocess, sys, time
launcher, out_dir, request, answer = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
word = os.read(request, 16).decode().strip()
if not word:
    sys.exit(0)  # the daemon ended before its sandbox
pid = launcher
if word == "child":
    with open(f"/proc/{launcher}/task/{launcher}/children") as f:
        pid = [p for p in f.read().split() if p != str(os.getpid())][0]
subprocess.Popen(
    ["strace", "-f", "-c", "-U", "name,calls,errors", "-o", f"{out_dir}/strace.{launcher}",
     "-p", pid],
    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    start_new_session=True,
)
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    try:
        with open(f"/proc/{pid}/status") as status:
            if not any(line.split() == ["TracerPid:", "0"] for line in status):
                break
    except OSError:
        break
    time.sleep(0.01)
os.write(answer, b"ok")
"""


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
        if arg == "-m" and argv[i + 1] == "fsd" and argv[i + 2 : i + 3] in (["serve"], ["mount"]):
            return argv[i + 2]
    return None


def _start_tracer(out_dir: str) -> tuple[int, int]:
    """The helper that attaches strace later; the ends this process keeps: (write the
    word, read the answer)."""
    import subprocess

    request_r, request_w = os.pipe2(os.O_CLOEXEC)
    answer_r, answer_w = os.pipe2(os.O_CLOEXEC)
    subprocess.Popen(
        [sys.executable, "-c", _TRACER, str(os.getpid()), out_dir, str(request_r), str(answer_w)],
        pass_fds=(request_r, answer_w),
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.close(request_r)
    os.close(answer_w)
    return request_w, answer_r


def _record_imports(fd: int) -> None:
    before = set(sys.modules)

    def hook(event: str, args: tuple[object, ...]) -> None:
        if event == "import" and isinstance(args[0], str) and args[0] not in before:
            before.add(args[0])
            os.write(fd, (args[0] + "\n").encode())

    sys.addaudithook(hook)


def _install() -> None:
    mode = os.environ.get("FSD_MEASURE")
    out_dir = os.environ.get("FSD_MEASURE_DIR")
    command = _daemon_command()
    if mode not in ("strace", "verify") or not out_dir or command is None:
        return
    from fsd.sandbox import seccomp

    launcher = os.getpid()
    with open(f"{out_dir}/command.{launcher}", "w") as f:
        f.write(command)
    with open(f"{out_dir}/argv.{launcher}", "w") as f:
        f.write(" ".join(getattr(sys, "orig_argv", sys.argv)))
    imports = os.open(
        f"{out_dir}/imports.{launcher}", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
    )
    tracer = _start_tracer(out_dir) if mode == "strace" else None
    real_install = seccomp.install_filter

    def install_filter(action: object, syscalls: object) -> object:
        if tracer is None:
            from fsd.sandbox.syscalls import allowed

            action, syscalls = seccomp.SeccompAction.LOG, allowed(command)
        else:  # no filter: what the list lacks must show, not end the daemon
            import ctypes

            action = seccomp.SeccompAction.NONE
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(0x59616D61, ctypes.c_ulong(-1 & 0xFFFFFFFFFFFFFFFF), 0, 0, 0)  # ANY
        installed = real_install(action, syscalls)  # type: ignore[arg-type]
        if tracer is not None:  # attached once the filter is in (a tracer may attach then)
            request, answer = tracer
            os.write(request, b"self\n" if os.getpid() == launcher else b"child\n")
            os.read(answer, 2)
        _record_imports(imports)
        return installed

    seccomp.install_filter = install_filter  # type: ignore[assignment]


try:
    _install()
except Exception as exc:  # never break the process being measured
    print(f"fsd measurement hook: {exc}", file=sys.stderr)
