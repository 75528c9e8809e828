"""Boot a Linux guest under QEMU against a vhost-user-fs backend and run a shell workload in it.

The guest is the test bed that contrib/testbed/build.sh builds (shipped with fsd as
fsd/testing/testbed/build.sh, see :mod:`fsd.resources`): a Debian cloud kernel and a busybox
initramfs whose /init loads the virtio-fs modules, mounts ``-t virtiofs TAG $MNT`` and
runs the workload with ``$MNT`` as its working directory. The workload travels in a small cpio
archive appended to the prebuilt initramfs (Linux unpacks concatenated archives), so a run
needs no rebuild. /init reports on the serial console with ``@@FSD`` marker lines, parsed here.

The harness does not care which backend serves the socket: fsd, QEMU's C virtiofsd or the Rust
virtiofsd. While the guest runs, the host can act on request: the workload calls
``host_step NAME ARGS...``, the harness awaits ``on_step(NAME, ARGS)`` and sends its one-line
reply back on a second serial port, which no shared-directory state (such as an allowlist
that hides a marker file) can interfere with.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import trio

from fsd.resources import TESTBED, checkout_root, guest_image_dir
from fsd.unix_sockets import is_listening

__all__ = [
    "Backend",
    "BackendError",
    "FsdServing",
    "GuestError",
    "GuestImage",
    "GuestResult",
    "GuestRunner",
    "StepHandler",
    "build_rootfs",
    "build_testbed",
    "fsd_env",
    "fsd_serve_command",
    "newc_archive",
    "parse_console",
    "qemu_command",
    "rootfs_append",
    "run_guest",
    "run_guest_rootfs",
    "running_backend",
    "virtiofsd_command",
    "wait_listening",
    "write_workload_initrd",
]

MARKER = "@@FSD "
REPO_ROOT = Path(__file__).resolve().parents[2]
"""The source checkout's root when fsd runs from one (see :func:`fsd.resources.checkout_root`)."""
BUILD_SCRIPT = TESTBED / "build.sh"
ROOTFS_SCRIPT = TESTBED / "rootfs.sh"
ROOTFS_INIT = TESTBED / "init-rootfs.sh"

StepHandler = Callable[[str, list[str]], Awaitable[str | None]]
"""``on_step(name, args)``: the host's part of a ``host_step`` call; returns the reply line."""

GuestRunner = Callable[..., Awaitable["GuestResult"]]
"""A ``run_guest`` with the backend already chosen (the guest tests' ``run_in_guest``)."""


class GuestError(Exception):
    """The guest did not run the workload to a clean exit; carries the whole console."""


class BackendError(Exception):
    """The backend process died or never listened; carries its log."""


@dataclass(frozen=True)
class GuestImage:
    """The boot files of a built test bed: kernel and base initramfs."""

    kernel: Path
    initramfs: Path

    @classmethod
    def default(cls) -> GuestImage:
        """The test bed in :func:`fsd.resources.guest_image_dir`: ``$FSD_TESTBED_DIR``, the
        checkout's build/testbed, or ~/.cache/fsd/testbed for an installed fsd."""
        root = guest_image_dir()
        return cls(kernel=root / "vmlinuz", initramfs=root / "initramfs.cpio")

    def exists(self) -> bool:
        return self.kernel.is_file() and self.initramfs.is_file()


def build_testbed() -> GuestImage:
    """Run build.sh (fast when already built) and return the result; raises if it fails.

    build.sh is told where to build (its own default is right only in a checkout)."""
    env = {**os.environ, "FSD_TESTBED_DIR": str(guest_image_dir())}
    subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, env=env)
    image = GuestImage.default()
    if not image.exists():
        raise RuntimeError(f"{BUILD_SCRIPT} succeeded but left no kernel/initramfs")
    return image


@dataclass(frozen=True)
class GuestResult:
    """What one guest run produced. Times are host seconds since QEMU was started."""

    output: str
    """The workload's stdout and stderr, as the console showed them (no ``\\r``)."""
    exit_status: int | None
    """The workload's exit status; None if it never finished (timeout, crash, mount failure)."""
    console: str
    """The whole serial console: kernel messages, markers and output."""
    boot_to_mount_seconds: float | None
    """QEMU start until the guest reported virtio-fs mounted."""
    guest_uptime_at_mount: float | None
    """The guest kernel's own uptime when the mount completed."""
    total_seconds: float
    """QEMU start until QEMU exited (or was killed)."""
    timed_out: bool
    failure: str | None
    """The guest's own failure report (``insmod`` or ``mount`` failed), if any."""
    qemu_returncode: int | None
    qemu_stderr: str
    steps: list[str] = field(default_factory=list)
    """The ``host_step`` names the guest asked for, in order."""

    def check(self) -> GuestResult:
        """Return self if the workload exited 0, else raise GuestError with the console."""
        if self.exit_status != 0:
            raise GuestError(self.describe())
        return self

    def describe(self) -> str:
        """A failure report readable in a pytest log."""
        if self.timed_out:
            what = "timed out"
        elif self.failure is not None:
            what = f"failed before the workload: {self.failure}"
        elif self.exit_status is None:
            what = f"QEMU exited ({self.qemu_returncode}) before the workload finished"
        else:
            what = f"workload exited with status {self.exit_status}"
        return (
            f"guest {what} after {self.total_seconds:.1f} s\n"
            f"--- console ---\n{self.console}\n--- qemu stderr ---\n{self.qemu_stderr}"
        )


def newc_archive(files: Mapping[str, bytes], *, mode: int = 0o755) -> bytes:
    """A cpio "newc" archive holding ``files`` (and their parent directories), for the initrd."""
    out = bytearray()
    ino = 1

    def entry(name: str, file_mode: int, data: bytes) -> None:
        nonlocal ino
        fields = (ino, file_mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0)
        out.extend(b"070701" + b"".join(b"%08X" % value for value in fields))
        out.extend(name.encode() + b"\0")
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))
        ino += 1

    dirs = sorted({str(parent) for name in files for parent in Path(name).parents} - {"."})
    for directory in dirs:
        entry(directory, 0o040755, b"")
    for name, data in sorted(files.items()):
        entry(name, 0o100000 | mode, data)
    entry("TRAILER!!!", 0, b"")
    return bytes(out)


def _run_conf(tag: str, mount_options: str) -> bytes:
    return f"TAG={shlex.quote(tag)}\nMOUNT_OPTS={shlex.quote(mount_options)}\n".encode()


def _write_initrd(path: Path, base: Path, workload: str, tag: str, mount_options: str) -> None:
    """Base initramfs + zero padding to 4 bytes (the kernel wants aligned archives) + run files."""
    files = {"fsd/workload.sh": workload.encode(), "fsd/run.conf": _run_conf(tag, mount_options)}
    _append_archive(path, base, newc_archive(files))


def write_workload_initrd(
    path: str | os.PathLike[str],
    workload: str,
    *,
    tag: str = "myfs",
    mount_options: str = "",
    guest_image: GuestImage | None = None,
) -> Path:
    """The test bed's initramfs with ``workload`` in it, at ``path``: for a guest that
    another program boots (libvirt), which then reports on its serial console as under
    :func:`run_guest`."""
    image = guest_image or GuestImage.default()
    _write_initrd(Path(path), image.initramfs, workload, tag, mount_options)
    return Path(path)


def parse_console(console: str) -> tuple[str, int | None]:
    """The workload's output and exit status from a console transcript (None: no END)."""
    state = _ConsoleState(time.monotonic())
    for line in console.splitlines():
        state.feed(line.rstrip("\r"))
    return "".join(f"{line}\n" for line in state.output), state.exit_status


def qemu_command(
    *,
    guest_image: GuestImage,
    initrd: Path,
    socket_path: Path,
    host_channel: Path,
    tag: str,
    memory: str,
    accel: str,
    extra_append: str,
    fs_device_options: str = "",
) -> list[str]:
    """The test bed's QEMU command line: q35, memfd guest memory shared with the back-end
    (``share=on``), the vhost-user-fs device on ``socket_path``, the console on stdout and
    a second serial port for host steps."""
    qemu = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
    append = " ".join(part for part in ("console=ttyS0 panic=-1 quiet", extra_append) if part)
    return [
        qemu,
        "-nodefaults",
        "-no-user-config",
        "-machine",
        f"q35,accel={accel}",
        "-m",
        memory,
        "-smp",
        "1",
        "-object",
        f"memory-backend-memfd,id=mem,size={memory},share=on",
        "-numa",
        "node,memdev=mem",
        "-chardev",
        f"socket,id=fs0,path={socket_path}",
        "-device",
        ",".join(filter(None, ("vhost-user-fs-pci,chardev=fs0", f"tag={tag}", fs_device_options))),
        "-kernel",
        str(guest_image.kernel),
        "-initrd",
        str(initrd),
        "-append",
        append,
        "-display",
        "none",
        "-monitor",
        "none",
        "-chardev",
        "stdio,id=console,signal=off",
        "-serial",
        "chardev:console",
        "-chardev",
        f"socket,id=host,path={host_channel}",
        "-serial",
        "chardev:host",
        "-no-reboot",
    ]


class _ConsoleState:
    """Parses marker lines as they arrive; everything else is console text."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.lines: list[str] = []
        self.output: list[str] = []
        self.in_workload = False
        self.exit_status: int | None = None
        self.mounted_at: float | None = None
        self.uptime_at_mount: float | None = None
        self.failure: str | None = None
        self.steps: list[str] = []

    def feed(self, line: str) -> list[str] | None:
        """Record one console line; returns a step request's words if the line is one."""
        self.lines.append(line)
        marker = line.find(MARKER)
        if marker < 0:
            if self.in_workload:
                self.output.append(line)
            return None
        words = line[marker + len(MARKER) :].split()
        kind, args = (words[0], words[1:]) if words else ("", [])
        if kind == "MOUNTED":
            self.mounted_at = time.monotonic() - self.started
            self.uptime_at_mount = _float_or_none(args[0]) if args else None
        elif kind == "BEGIN":
            self.in_workload = True
        elif kind == "END":
            self.in_workload = False
            self.exit_status = int(args[0]) if args and args[0].isdigit() else None
        elif kind == "FAIL":
            self.failure = " ".join(args)
        elif kind == "STEP" and args:
            self.steps.append(args[0])
            return args
        return None


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


async def _read_lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[str]:
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for raw in complete:
            yield raw.decode(errors="replace").rstrip("\r")
    if buffer:
        yield buffer.decode(errors="replace").rstrip("\r")


async def run_guest(
    workload: str,
    *,
    socket_path: str | os.PathLike[str],
    tag: str = "myfs",
    time_limit: float = 120.0,
    memory: str = "1G",
    extra_append: str = "",
    mount_options: str = "",
    on_step: StepHandler | None = None,
    on_line: Callable[[str], None] | None = None,
    guest_image: GuestImage | None = None,
    accel: str | None = None,
    fs_device_options: str = "",
) -> GuestResult:
    """Boot the guest against the backend listening on ``socket_path`` and run ``workload``.

    ``fs_device_options`` are more properties of QEMU's vhost-user-fs-pci device (for
    example ``num-request-queues=4,queue-size=1024``).

    ``workload`` is a busybox ``sh`` script, sourced in a subshell with cwd ``$MNT`` (the
    virtio-fs mount); ``host_step`` and ``as_user`` are defined for it. ``on_line`` sees every
    console line as it arrives (for live transcripts). After ``time_limit`` seconds (boot,
    workload and shutdown) QEMU is killed and the result says so. Call ``.check()`` to turn
    anything but exit status 0 into a GuestError.
    """
    guest_image = guest_image or GuestImage.default()
    if not guest_image.exists():
        raise GuestError(f"no test bed at {guest_image.kernel.parent}: run {BUILD_SCRIPT}")
    accel = accel or os.environ.get("FSD_GUEST_ACCEL", "tcg")
    with tempfile.TemporaryDirectory(prefix="fsd-guest-") as tmp:
        initrd = Path(tmp) / "initrd.cpio"
        _write_initrd(initrd, guest_image.initramfs, workload, tag, mount_options)
        return await _boot(
            guest_image, initrd, Path(socket_path), tag, memory, accel, extra_append,
            time_limit, on_step, on_line, fs_device_options,
        )  # fmt: skip


def build_rootfs(dest: str | os.PathLike[str], *, workload: str | None = None) -> Path:
    """Build a busybox root tree at ``dest`` (contrib/testbed/rootfs.sh) for a virtio-fs root.

    ``workload`` goes to /etc/fsd/workload.sh, which the tree's boot script runs with cwd /root
    between ``@@FSD BEGIN``/``END`` markers before powering off.
    """
    dest = Path(dest)
    subprocess.run(["bash", str(ROOTFS_SCRIPT), str(dest)], check=True)
    if workload is not None:
        (dest / "etc" / "fsd" / "workload.sh").write_text(workload)
    return dest


def rootfs_append(tag: str, *, read_only: bool = False, root_flags: str = "") -> str:
    """The kernel arguments that make virtio-fs ``tag`` the root filesystem."""
    args = [f"rootfstype=virtiofs root={tag}", "ro" if read_only else "rw"]
    if root_flags:
        args.append(f"rootflags={root_flags}")
    return " ".join(args)


def _write_rootfs_initrd(path: Path, base: Path) -> None:
    """Base initramfs (modules, busybox) with init-rootfs.sh appended over its /init."""
    _append_archive(path, base, newc_archive({"init": ROOTFS_INIT.read_bytes()}))


def _append_archive(path: Path, base: Path, extra: bytes) -> None:
    """Write ``base`` to ``path``, pad it to 4 bytes (the kernel wants aligned archives) and
    append ``extra``: Linux unpacks concatenated cpio archives, later files replacing earlier."""
    with path.open("wb") as out, base.open("rb") as src:
        size = 0
        while chunk := src.read(1 << 20):
            out.write(chunk)
            size += len(chunk)
        out.write(b"\0" * (-size % 4))
        out.write(extra)


async def run_guest_rootfs(
    *,
    socket_path: str | os.PathLike[str],
    tag: str = "rootfs",
    time_limit: float = 60.0,
    memory: str = "1G",
    read_only: bool = False,
    root_flags: str = "",
    extra_append: str = "",
    on_line: Callable[[str], None] | None = None,
    guest_image: GuestImage | None = None,
    accel: str | None = None,
) -> GuestResult:
    """Boot the guest with the backend on ``socket_path`` as its root filesystem.

    The backend serves a tree from ``build_rootfs``. The initramfs only loads the virtio-fs
    modules, mounts ``tag`` and switch_roots; the tree's own init runs its workload and powers
    off. ``boot_to_mount_seconds`` is QEMU start until the root was mounted; the tree's boot
    script adds ``INIT``, ``POWEROFF``, ``ROOT-RO`` and ``DONE`` markers to the console.
    """
    guest_image = guest_image or GuestImage.default()
    if not guest_image.exists():
        raise GuestError(f"no test bed at {guest_image.kernel.parent}: run {BUILD_SCRIPT}")
    accel = accel or os.environ.get("FSD_GUEST_ACCEL", "tcg")
    append = " ".join(
        part
        for part in (rootfs_append(tag, read_only=read_only, root_flags=root_flags), extra_append)
        if part
    )
    with tempfile.TemporaryDirectory(prefix="fsd-guest-") as tmp:
        initrd = Path(tmp) / "initrd.cpio"
        _write_rootfs_initrd(initrd, guest_image.initramfs)
        return await _boot(
            guest_image, initrd, Path(socket_path), tag, memory, accel, append,
            time_limit, None, on_line,
        )  # fmt: skip


async def _boot(
    guest_image: GuestImage,
    initrd: Path,
    socket_path: Path,
    tag: str,
    memory: str,
    accel: str,
    append: str,
    time_limit: float,
    on_step: StepHandler | None,
    on_line: Callable[[str], None] | None,
    fs_device_options: str = "",
) -> GuestResult:
    """Boot QEMU with ``initrd`` (next to it, in its folder, the host-step channel)."""
    host_channel = initrd.with_name("host.sock")
    listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    with listener:
        await listener.bind(str(host_channel))
        listener.listen(1)
        argv = qemu_command(
            guest_image=guest_image,
            initrd=initrd,
            socket_path=socket_path,
            host_channel=host_channel,
            tag=tag,
            memory=memory,
            accel=accel,
            extra_append=append,
            fs_device_options=fs_device_options,
        )
        return await _run_qemu(argv, listener, time_limit, on_step, on_line)


async def _run_qemu(
    argv: list[str],
    listener: trio.socket.SocketType,
    time_limit: float,
    on_step: StepHandler | None,
    on_line: Callable[[str], None] | None,
) -> GuestResult:
    started = time.monotonic()
    state = _ConsoleState(started)
    stderr = bytearray()
    process = await trio.lowlevel.open_process(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None
    assert process.stderr is not None
    host_stream: trio.SocketStream | None = None
    connected = trio.Event()
    console_done = trio.Event()
    timed_out = False

    async def accept_host_channel() -> None:
        nonlocal host_stream
        sock, _ = await listener.accept()
        host_stream = trio.SocketStream(sock)
        connected.set()

    async def answer_step(args: list[str]) -> None:
        reply: str | None = "!no on_step handler on the host"
        if on_step is not None:
            reply = await on_step(args[0], args[1:])
        await connected.wait()
        assert host_stream is not None
        line = (reply or "").replace("\n", " ")
        await host_stream.send_all(line.encode() + b"\n")

    async def read_console(nursery: trio.Nursery) -> None:
        assert process.stdout is not None
        async for line in _read_lines(process.stdout):
            if on_line is not None:
                on_line(line)
            step = state.feed(line)
            if step is not None:
                nursery.start_soon(answer_step, step)
        console_done.set()

    async def read_stderr() -> None:
        assert process.stderr is not None
        async for chunk in process.stderr:
            stderr.extend(chunk)

    try:
        with trio.move_on_after(time_limit) as deadline:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(accept_host_channel)
                nursery.start_soon(read_stderr)
                nursery.start_soon(read_console, nursery)
                await process.wait()
                # Read what QEMU wrote before it exited, then stop waiting on the step channel.
                with trio.move_on_after(5):
                    await console_done.wait()
                nursery.cancel_scope.cancel()
        timed_out = deadline.cancelled_caught
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
            if host_stream is not None:
                await host_stream.aclose()
    return GuestResult(
        output="".join(f"{line}\n" for line in state.output),
        exit_status=state.exit_status,
        console="\n".join(state.lines),
        boot_to_mount_seconds=state.mounted_at,
        guest_uptime_at_mount=state.uptime_at_mount,
        total_seconds=time.monotonic() - started,
        timed_out=timed_out,
        failure=state.failure,
        qemu_returncode=process.returncode,
        qemu_stderr=stderr.decode(errors="replace"),
        steps=state.steps,
    )


def unix_socket_listening(path: str | os.PathLike[str]) -> bool:
    """True once some process listens on the Unix socket ``path`` (see
    :func:`fsd.unix_sockets.is_listening`: connecting to find out would take the back-end's
    one front-end connection)."""
    return is_listening(path)


async def wait_listening(
    path: str | os.PathLike[str], *, process: trio.Process | None = None
) -> None:
    """Wait until a Unix socket at ``path`` is listening; fail early if ``process`` exits.

    It waits forever otherwise: bound it with ``trio.fail_after``.
    """
    while not unix_socket_listening(path):
        if process is not None and process.returncode is not None:
            raise BackendError(f"backend exited with {process.returncode} before listening")
        await trio.sleep(0.02)


@dataclass
class Backend:
    """A running backend process and where its output goes."""

    process: trio.Process
    socket_path: Path
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def _open_log(path: str | os.PathLike[str]) -> IO[bytes]:
    """The backend's log file; opened outside async code (blocking open), closed by the caller."""
    return open(path, "wb")


FsdServing = Callable[..., AbstractAsyncContextManager[Backend]]
"""``fsd serve`` on a test's shared directory with more arguments, as an ``async with``
(the guest tests' ``fsd_serving`` fixture)."""


@asynccontextmanager
async def running_backend(
    argv: Sequence[str],
    socket_path: str | os.PathLike[str],
    *,
    log_path: str | os.PathLike[str],
    listen_timeout: float = 15.0,
    env: Mapping[str, str] | None = None,
    stop_timeout: float = 5.0,
    pass_fds: Sequence[int] = (),
    ready_text: str | None = None,
) -> AsyncIterator[Backend]:
    """Start a vhost-user backend, wait until its socket listens, stop it (SIGTERM) on exit.

    ``pass_fds`` are inherited by the backend under their own numbers (``--fd N``: a socket
    the caller made listen at ``socket_path``, as libvirt and Kata do). ``ready_text``:
    also wait for this in its log (a sandboxed fsd's socket listens before the server runs:
    ``vhost-user: listening on`` says it does)."""
    with _open_log(log_path) as log_file:
        process = await trio.lowlevel.open_process(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=None if env is None else {**os.environ, **env},
            pass_fds=tuple(pass_fds),
        )
        backend = Backend(process, Path(socket_path), Path(log_path))
        try:
            try:
                with trio.fail_after(listen_timeout):
                    await wait_listening(socket_path, process=process)
                    while ready_text is not None and ready_text not in backend.log():
                        if process.returncode is not None:
                            raise BackendError(f"exited {process.returncode}")
                        await trio.sleep(0.02)
            except (BackendError, trio.TooSlowError) as exc:
                what = str(exc) or f"no listener on {socket_path} after {listen_timeout} s"
                raise BackendError(f"{what}\n--- backend log ---\n{backend.log()}") from exc
            yield backend
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
                    with trio.move_on_after(stop_timeout):
                        await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()


def fsd_serve_command(
    socket_path: str | os.PathLike[str], shared_dir: str | os.PathLike[str], *extra: str
) -> list[str]:
    """``python -m fsd serve`` for this interpreter."""
    return [
        sys.executable,
        "-m",
        "fsd",
        "serve",
        "--socket-path",
        str(socket_path),
        "--shared-dir",
        str(shared_dir),
        *extra,
    ]


def fsd_env() -> dict[str, str]:
    """The environment for ``python -m fsd`` children: ours, with this checkout on PYTHONPATH.

    ``-m fsd`` finds the package through the child's cwd or an install; neither is certain
    when a test or the demo runs from elsewhere, so the checkout is named explicitly. An
    installed fsd is found by the interpreter itself: nothing is added then.
    """
    root = checkout_root()
    if root is None:
        return dict(os.environ)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{path}" if path else str(root)}


def virtiofsd_command(
    socket_path: str | os.PathLike[str], shared_dir: str | os.PathLike[str]
) -> list[str]:
    """QEMU's C virtiofsd (Debian ships it with qemu-system-x86): the reference backend."""
    return [
        "/usr/lib/qemu/virtiofsd",
        f"--socket-path={socket_path}",
        "-o",
        f"source={shared_dir}",
        "-o",
        "cache=auto",
    ]
