"""A real systemd service manager for tests: ``systemd --user``, run as root on a machine
whose PID 1 is not systemd.

The user manager is the same program as PID 1's manager (socket units, ``Type=notify``,
EnvironmentFile=, the sandboxing options), so the units in contrib/systemd run under it as
they would under the system manager, with ``%t`` and ``%E`` pointing at a runtime and a
configuration directory of the test's own. Three things make it start and keep it to itself:

- it refuses to run unless /run/systemd/system exists ("the system was booted with
  systemd"), and mounting sandboxes needs /run/systemd/inaccessible/{reg,dir,chr,blk,fifo,
  sock}, which PID 1 creates at boot: both are made on a tmpfs over /run/systemd in a mount
  namespace of its own (``unshare --mount``), so the host's /run/systemd is never touched;
  /run is made a mount point there too (a bind mount of itself), as it is on any systemd
  machine: sandboxing options that mount the API file systems would otherwise put an empty
  tmpfs on /run and hide the runtime directory;
- it takes the cgroup it starts in as the root of its tree and moves everything in that
  cgroup into its init.scope: it starts in a fresh child cgroup in each hierarchy it uses
  (name=systemd and the unified one), removed afterwards;
- its runtime directory is under /run, not /tmp, because ``PrivateTmp=`` services would not
  see a notify socket or a runtime directory in the host's /tmp.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["UserManager", "running_user_manager", "user_manager_unavailable"]

SYSTEMD = next(
    (p for p in ("/lib/systemd/systemd", "/usr/lib/systemd/systemd") if os.path.exists(p)), None
)

_INACCESSIBLE = (
    "mkdir dir; touch reg; mkfifo fifo; mknod chr c 0 0; mknod blk b 0 0; "
    "python3 -c 'import os, stat; os.mknod(\"sock\", stat.S_IFSOCK)'; "
    "chmod 0000 dir reg fifo chr blk sock"
)


def _cgroup_dirs() -> list[Path]:
    """The directories of this process's cgroups in the hierarchies systemd uses."""
    dirs = []
    with open("/proc/self/cgroup") as f:
        for line in f:
            hierarchy, controllers, path = line.rstrip("\n").split(":", 2)
            if hierarchy == "0" and not controllers:
                unified = Path("/sys/fs/cgroup/unified")
                root = unified if (unified / "cgroup.procs").exists() else Path("/sys/fs/cgroup")
            elif controllers == "name=systemd":
                root = Path("/sys/fs/cgroup/systemd")
            else:
                continue
            dirs.append(root / path.lstrip("/"))
    return dirs


def user_manager_unavailable() -> str | None:
    """Why ``systemd --user`` cannot be run here (a skip reason), or None."""
    if os.geteuid() != 0:
        return "running systemd --user with its sandboxing options needs root"
    if SYSTEMD is None:
        return "systemd is not installed (contrib/setup-host.sh installs it)"
    for tool in ("unshare", "systemctl", "python3"):
        if shutil.which(tool) is None:
            return f"{tool} is missing"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if probe.returncode != 0:
        return f"no mount namespace for the manager: unshare --mount: {probe.stderr.strip()}"
    dirs = _cgroup_dirs()
    if not dirs:
        return "no name=systemd or unified cgroup hierarchy in /proc/self/cgroup"
    for directory in dirs:
        if not os.access(directory, os.W_OK):
            return f"cgroup {directory} is not writable: systemd could not make its tree"
    return None


class UserManager:
    """A running ``systemd --user`` and the directories it works with."""

    def __init__(self, runtime_dir: Path, config_dir: Path, process: subprocess.Popen[bytes]):
        self.runtime_dir = runtime_dir
        self.config_dir = config_dir
        self.unit_dir = config_dir / "systemd" / "user"
        self.process = process

    def systemctl(self, *args: str, check: bool = True) -> str:
        """``systemctl --user ARGS`` against this manager; its stdout."""
        result = subprocess.run(
            ["systemctl", "--user", "--no-pager", *args],
            env={**os.environ, "XDG_RUNTIME_DIR": str(self.runtime_dir)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"systemctl --user {shlex.join(args)}: {result.stderr}")
        return result.stdout

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl("show", "-P", prop, unit).strip()

    def wait_for(self, unit: str, prop: str, value: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while (current := self.show(unit, prop)) != value:
            if time.monotonic() > deadline:
                status = self.systemctl("status", unit, check=False)
                raise AssertionError(f"{unit} {prop}={current!r}, not {value!r}:\n{status}")
            time.sleep(0.05)


@contextlib.contextmanager
def running_user_manager() -> Iterator[UserManager]:
    """Start ``systemd --user`` (see the module docstring), yield it, stop it and remove its
    cgroups and directories."""
    assert SYSTEMD is not None
    runtime_dir = Path(tempfile.mkdtemp(prefix="fsd-sd-", dir="/run"))
    config_dir = runtime_dir / "config"
    (config_dir / "systemd" / "user").mkdir(parents=True)
    name = f"fsd-test-{uuid.uuid4().hex[:12]}"
    cgroups = [directory / name for directory in _cgroup_dirs()]
    join = "; ".join(
        f"mkdir {shlex.quote(str(d))}; echo $$ > {shlex.quote(str(d / 'cgroup.procs'))}"
        for d in cgroups
    )
    script = (
        f"set -e; {join}; mount --bind /run /run; mount -t tmpfs -o mode=0755 tmpfs /run/systemd; "
        "mkdir -p /run/systemd/system /run/systemd/inaccessible; cd /run/systemd/inaccessible; "
        f"{_INACCESSIBLE}; cd /; exec {SYSTEMD} --user"
    )
    env = {
        **os.environ,
        "XDG_RUNTIME_DIR": str(runtime_dir),
        "XDG_CONFIG_HOME": str(config_dir),
        "SYSTEMD_LOG_LEVEL": "info",
    }
    env.pop("NOTIFY_SOCKET", None)
    log = (runtime_dir / "manager.log").open("wb")
    process = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    manager = UserManager(runtime_dir, config_dir, process)
    try:
        deadline = time.monotonic() + 30
        while manager.systemctl("show", "-P", "SystemState", check=False).strip() not in (
            "running",
            "degraded",
        ):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"systemd --user did not start ({process.returncode}): "
                    + (runtime_dir / "manager.log").read_text(errors="replace")
                )
            time.sleep(0.05)
        yield manager
    finally:
        _stop(process, cgroups)
        log.close()
        shutil.rmtree(runtime_dir, ignore_errors=True)


def _stop(process: subprocess.Popen[bytes], cgroups: list[Path]) -> None:
    """SIGTERM the manager (it stops its units), then kill whatever is left in its cgroups
    and remove them, deepest first."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for root in cgroups:
        if not root.exists():
            continue
        for directory in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if directory.is_dir():
                _empty_and_remove(directory)
        _empty_and_remove(root)


def _empty_and_remove(directory: Path) -> None:
    for _ in range(100):
        try:
            pids = (directory / "cgroup.procs").read_text().split()
        except OSError:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        try:
            directory.rmdir()
            return
        except OSError:
            time.sleep(0.05)
