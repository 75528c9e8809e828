"""The sandbox, entered for real by a child process (tests/sandbox/probe.py), checked from
outside through /proc/<pid> and from inside by what the probe reports.

Namespace and chroot modes need root (chroot: CAP_SYS_CHROOT; namespace: root, or an
unprivileged user where the kernel allows user namespaces, which has its own test).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fsd.sandbox import FILE_SERVER_CAPABILITIES, CapabilityError, parse_modcaps
from fsd.sandbox.capabilities import capability_mask
from fsd.sandbox.syscalls import ALLOWED
from fsd.testing.guest import fsd_env
from fsd.testing.kmsg import KernelLogFollower
from tests.devfuse.unprivileged import system_python
from tests.sandbox.probe import FORBIDDEN_SYSCALL

REPO = Path(__file__).resolve().parents[2]
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
FILE_SERVER_MASK = capability_mask(FILE_SERVER_CAPABILITIES)
SIGSYS = int(signal.SIGSYS)
PRINTK_RATELIMIT_INTERVAL = 5  # seconds, the kernel's default kernel.printk_ratelimit


@pytest.fixture
def share() -> Iterator[Path]:
    """A shared directory with symlinks that point out of it, absolute and relative."""
    with tempfile.TemporaryDirectory(prefix="fsd-sandbox-") as tmp:
        path = Path(tmp) / "share"
        path.mkdir()
        (path / "inside.txt").write_text("shared\n")
        os.symlink("/", path / "link_abs_root")
        os.symlink("/etc", path / "link_abs_etc")
        os.symlink("/etc/passwd", path / "link_abs_passwd")
        depth = len(path.parts)
        os.symlink("../" * depth, path / "link_rel_root")
        os.symlink("../" * depth + "etc", path / "link_rel_etc")
        yield path


class Probe:
    """tests/sandbox/probe.py in a child process; ``report`` is what it saw from inside."""

    def __init__(
        self,
        mode: str,
        seccomp: str,
        share: Path,
        *,
        then: str = "wait",
        modcaps: str | None = None,
        user: int | None = None,
        keep: tuple[str, ...] = (),
        supervisor_keeps: tuple[str, ...] = (),
    ) -> None:
        argv = ["-m", "tests.sandbox.probe", mode, seccomp, str(share), "--then", then]
        if modcaps is not None:
            argv += ["--modcaps", modcaps]
        for path in keep:
            argv += ["--keep", path]
        for name in supervisor_keeps:
            argv += ["--supervisor-keeps", name]
        python = sys.executable if user is None else system_python()
        self.proc = subprocess.Popen(
            [python, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd="/",
            env=fsd_env(),
            preexec_fn=None if user is None else _become(user),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.report: dict[str, Any] = json.loads(line) if line else {}

    def finish(self, timeout: float = 20) -> tuple[int, str, str]:
        """Let it exit (stdin closed); its status, the rest of stdout, and stderr."""
        assert self.proc.stdin and self.proc.stdout and self.proc.stderr
        with self.proc.stdin, self.proc.stdout, self.proc.stderr:
            self.proc.stdin.close()
            out = self.proc.stdout.read()  # through the buffer the first line was read from
            err = self.proc.stderr.read()
        self.proc.wait(timeout)
        return self.proc.returncode, out, err

    def status(self) -> dict[str, str]:
        text = Path(f"/proc/{self.report['host_pid']}/status").read_text()
        return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)

    def mounts(self) -> dict[str, tuple[str, str, str]]:
        """Mount point -> (root of the mount in its file system, options, type)."""
        table = {}
        for line in Path(f"/proc/{self.report['host_pid']}/mountinfo").read_text().splitlines():
            fields, _, fs = line.partition(" - ")
            columns = fields.split()
            table[columns[4]] = (columns[3], columns[5], fs.split()[0])
        return table


def _become(uid: int) -> Any:
    def switch() -> None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)

    return switch


def _mask(status: dict[str, str], key: str) -> int:
    return int(status[key].strip(), 16)


# -- namespace mode --------------------------------------------------------------------


@root_only
def test_namespace_root_holds_the_share_and_nothing_of_the_host(share: Path) -> None:
    probe = Probe("namespace", "kill", share)
    try:
        report = probe.report
        assert report, probe.finish()
        assert report["pid"] == 1  # pid 1 of its own pid namespace
        mounts = probe.mounts()
        # The root: an empty tmpfs, read-only; on it only our fd table, the share (rw) and,
        # read-only, where Python loads code from.
        root_mount = mounts.pop("/")
        assert root_mount[1].startswith("ro,") and root_mount[2] == "tmpfs"
        fd_root, _, fd_type = mounts.pop("/proc/self/fd")
        assert (fd_root, fd_type) == ("/1/fd", "proc")  # only pid 1's fd table, not proc
        assert mounts.pop(str(share))[1].startswith("rw")
        for point, (_, options, _) in mounts.items():
            assert options.startswith("ro,"), (point, options)
            assert not str(share).startswith(point + "/")
            assert any(point == p or point.startswith(p + "/") for p in [*sys.path, str(REPO)])
        host_root = Path(f"/proc/{report['host_pid']}/root")
        assert (host_root / share.relative_to("/") / "inside.txt").read_text() == "shared\n"
        assert not (host_root / "etc").exists()
        assert sorted(os.listdir(host_root / "proc")) == ["self"]
        # From inside: no /etc, only its own fds under /proc, symlinks lead nowhere outside.
        assert report["etc"] == "ENOENT"
        assert report["proc"] == ["self"]
        assert "etc" not in report["root"]
        links = report["links"]
        assert links["link_abs_etc"] == links["link_rel_etc"] == "ENOENT"
        assert links["link_abs_passwd"] == "ENOENT"
        assert links["link_abs_root"] == links["link_rel_root"] == report["root"]
        assert report["reopened"], "fsd's /proc/self/fd/N reopening must work inside"
        status = probe.status()
        assert status["NSpid"].split()[-1] == "1"
        for key in ("CapEff", "CapPrm", "CapBnd"):
            assert _mask(status, key) == FILE_SERVER_MASK, (key, status[key])
        assert _mask(status, "CapInh") == _mask(status, "CapAmb") == 0
        assert status["NoNewPrivs"].strip() == "1"
        assert status["Seccomp"].strip() == "2"  # filter mode
    finally:
        status_code, _, err = probe.finish()
    assert status_code == 0, err
    assert "cleanup ran" in err  # the supervisor, after the server exited


@root_only
def test_namespace_has_no_network_and_no_host_ipc(share: Path) -> None:
    probe = Probe("namespace", "none", share)
    try:
        pid = probe.report["host_pid"]
        for kind in ("net", "ipc", "mnt", "pid"):
            assert os.readlink(f"/proc/{pid}/ns/{kind}") != os.readlink(f"/proc/self/ns/{kind}")
        assert os.readlink(f"/proc/{pid}/ns/user") == os.readlink("/proc/self/ns/user")
    finally:
        probe.finish()


@root_only
def test_modcaps_adjust_the_kept_capabilities(share: Path) -> None:
    probe = Probe("namespace", "none", share, modcaps="+sys_admin:-mknod:-cap_setfcap")
    try:
        expected = (FILE_SERVER_CAPABILITIES | {"SYS_ADMIN"}) - {"MKNOD", "SETFCAP"}
        assert set(probe.report["capabilities"]) == expected
        assert _mask(probe.status(), "CapEff") == capability_mask(expected)
    finally:
        probe.finish()


@root_only
def test_extra_paths_are_kept_at_their_host_path(share: Path, tmp_path: Path) -> None:
    """What a plugin may need later: a read-only file, a writable directory."""
    policy = tmp_path / "policy.toml"
    policy.write_text("rules\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    probe = Probe("namespace", "kill", share, keep=(str(policy), f"{logs}:rw"))
    try:
        kept = probe.report["kept"]
        assert kept == {str(policy): "EROFS", str(logs): "written"}
        assert probe.mounts()[str(policy)][1].startswith("ro,")
    finally:
        status, _, err = probe.finish()
    assert status == 0, err
    assert (logs / "written").read_text() == "from the sandbox\n"
    assert policy.read_text() == "rules\n"


def test_a_missing_extra_path_is_refused_before_anything(share: Path, tmp_path: Path) -> None:
    probe = Probe("namespace", "kill", share, keep=(str(tmp_path / "nope"),))
    status, _, err = probe.finish()
    assert status == 1
    assert "does not exist" in err


@root_only
@pytest.mark.parametrize("keeps", [(), ("SYS_ADMIN",)])
def test_supervisor_holds_nothing(share: Path, keeps: tuple[str, ...]) -> None:
    """No fd but stdio, its liveness pipe and its line to the server (a listening socket left
    open in it would let a second VMM connect to nobody), no capability but what its cleanup
    needs (fsd mount's unmount), no_new_privs."""
    probe = Probe("namespace", "kill", share, supervisor_keeps=keeps)
    try:
        supervisor = probe.proc.pid
        fds = sorted(int(fd) for fd in os.listdir(f"/proc/{supervisor}/fd"))
        assert fds[:3] == [0, 1, 2] and len(fds) == 5, fds
        kinds = sorted(os.readlink(f"/proc/{supervisor}/fd/{fd}").split(":")[0] for fd in fds[3:])
        assert kinds == ["pipe", "socket"], kinds  # the liveness pipe, the line to the server
        status = dict(
            line.split(":\t", 1)
            for line in Path(f"/proc/{supervisor}/status").read_text().splitlines()
            if ":\t" in line
        )
        assert _mask(status, "CapEff") == _mask(status, "CapPrm") == capability_mask(keeps)
        assert status["NoNewPrivs"].strip() == "1"
    finally:
        status_code, _, err = probe.finish()
    assert status_code == 0, err


@root_only
def test_supervisor_forwards_sigterm_and_exits_with_the_server(share: Path) -> None:
    probe = Probe("namespace", "kill", share)
    assert probe.report
    probe.proc.send_signal(signal.SIGTERM)
    probe.proc.wait(10)  # with stdin still open: only the signal can end it
    status, _, err = probe.finish()
    assert status == 128 + signal.SIGTERM, err  # the probe has no handler but the sandbox's
    assert "cleanup ran" in err
    assert not Path(f"/proc/{probe.report['host_pid']}").exists()


@root_only
def test_server_dies_with_its_supervisor(share: Path) -> None:
    probe = Probe("namespace", "none", share)
    server = Path(f"/proc/{probe.report['host_pid']}")
    assert server.exists()
    probe.proc.kill()
    probe.finish()
    deadline = time.monotonic() + 10
    while _alive(server) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(server)


def _alive(proc: Path) -> bool:
    try:
        return "\nState:\tZ" not in (proc / "status").read_text()
    except FileNotFoundError:
        return False


# -- seccomp -----------------------------------------------------------------------------


def test_the_forbidden_call_is_not_on_the_allowlist() -> None:
    assert FORBIDDEN_SYSCALL not in ALLOWED


@root_only
def test_seccomp_kill_ends_the_server_with_sigsys(share: Path) -> None:
    probe = Probe("namespace", "kill", share, then="forbidden")
    status, out, err = probe.finish()
    assert status == 128 + SIGSYS, err  # the supervisor reports the server's death
    assert "killed by signal SIGSYS" in err
    assert "forbidden_returned" not in out


def test_seccomp_kill_without_a_supervisor(share: Path) -> None:
    probe = Probe("none", "kill", share, then="forbidden")
    status, out, err = probe.finish()
    assert status == -SIGSYS, err
    assert "forbidden_returned" not in out


def test_seccomp_allows_unshare_for_a_thread_umask_and_nothing_else(share: Path) -> None:
    """--posix-acl's per-thread umask needs unshare(CLONE_FS); the filter allows that one
    flag, so a namespace (here the smallest, UTS) cannot be made."""
    probe = Probe("none", "kill", share, then="unshare")
    status, out, err = probe.finish()
    assert '{"unshare_fs": 0}' in out, err
    assert status == -SIGSYS, err
    assert "forbidden_returned" not in out


@pytest.mark.parametrize("mode", ["none", pytest.param("namespace", marks=root_only)])
def test_seccomp_trap_writes_the_python_traceback_then_exits(share: Path, mode: str) -> None:
    """In namespace mode too, where the server is pid 1 and would ignore a re-raised SIGSYS."""
    probe = Probe(mode, "trap", share, then="forbidden")
    status, _, err = probe.finish()
    assert status == 128 + SIGSYS, err
    assert re.search(r'File ".*probe\.py", line \d+ in main', err), err
    assert "outside the seccomp allowlist" in err


@root_only
def test_seccomp_log_allows_the_call_and_the_kernel_logs_it(share: Path) -> None:
    try:
        kernel_log = KernelLogFollower()
    except OSError:
        pytest.skip("the kernel log is not readable here")
    number = _syscall_number(FORBIDDEN_SYSCALL)
    with kernel_log:
        # The kernel rate-limits audit lines it prints (printk_ratelimit: 10 every 5 s), and
        # the sandbox tests before this one log a record each: a second probe, after the
        # limit's interval, tells a suppressed line from one never written.
        for attempt in range(2):
            if attempt:
                time.sleep(PRINTK_RATELIMIT_INTERVAL)
            probe = Probe("none", "log", share, then="forbidden")
            status, out, err = probe.finish()
            assert status == 0, err
            assert "forbidden_returned" in out
            pid = probe.report["host_pid"]
            pattern = re.compile(rf"type=1326 .*pid={pid} .*syscall={number} ")
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                if any(pattern.search(line) for line in kernel_log.new_lines()):
                    return
                time.sleep(0.1)
    pytest.fail(f"no audit record for {FORBIDDEN_SYSCALL} in two probes")


def _syscall_number(name: str) -> int:
    import ctypes

    lib = ctypes.CDLL("libseccomp.so.2")
    number: int = lib.seccomp_syscall_resolve_name(name.encode())
    return number


# -- chroot and none ---------------------------------------------------------------------


@root_only
def test_chroot_confines_to_the_share(share: Path) -> None:
    probe = Probe("chroot", "kill", share)
    try:
        report = probe.report
        assert report["shared_dir"] == "/"
        assert os.readlink(f"/proc/{report['host_pid']}/root") == str(share)
        names = sorted(os.listdir(share))
        assert report["root"] == names
        links = report["links"]
        assert links["link_abs_etc"] == links["link_rel_etc"] == "ENOENT"
        assert links["link_abs_root"] == links["link_rel_root"] == names
        assert report["reopened"], "the fd given for /proc/self/fd must reopen inodes"
        status = probe.status()
        for key in ("CapEff", "CapPrm", "CapBnd"):
            assert _mask(status, key) == FILE_SERVER_MASK
        assert status["NoNewPrivs"].strip() == "1"
    finally:
        status_code, _, err = probe.finish()
    assert status_code == 0, err


def test_none_mode_warns_and_still_drops_privileges(share: Path) -> None:
    probe = Probe("none", "kill", share)
    try:
        assert probe.report["root"] == sorted(os.listdir("/"))
        status = probe.status()
        assert _mask(status, "CapEff") == FILE_SERVER_MASK & _mask(_own_status(), "CapPrm")
        assert status["NoNewPrivs"].strip() == "1"
    finally:
        status_code, _, err = probe.finish()
    assert status_code == 0, err
    assert "sandbox: none:" in err


def _own_status() -> dict[str, str]:
    text = Path("/proc/self/status").read_text()
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


# -- unprivileged: a user namespace ------------------------------------------------------


def _user_namespaces_allowed() -> str | None:
    """Why unprivileged user namespaces cannot be used here, or None."""
    for path, bad in (
        ("/proc/sys/kernel/unprivileged_userns_clone", "0"),
        ("/proc/sys/user/max_user_namespaces", "0"),
    ):
        try:
            if Path(path).read_text().strip() == bad:
                return f"{path} is {bad}"
        except OSError:
            pass
    return None


@root_only
def test_unprivileged_user_gets_a_user_namespace(share: Path) -> None:
    reason = _user_namespaces_allowed()
    if reason:
        pytest.skip(f"unprivileged user namespaces are off: {reason}")
    nobody = 65534
    os.chmod(share.parent, 0o755)
    os.chown(share, nobody, nobody)
    probe = Probe("namespace", "kill", share, user=nobody)
    try:
        report = probe.report
        assert report, probe.finish()
        pid = report["host_pid"]
        assert Path(f"/proc/{pid}/uid_map").read_text().split() == ["65534", "65534", "1"]
        assert os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user")
        assert report["etc"] == "ENOENT"
        assert report["links"]["link_abs_etc"] == "ENOENT"
        assert report["reopened"]
        status = probe.status()
        # Capabilities in its own user namespace: the file server's set, nothing more.
        assert _mask(status, "CapEff") == FILE_SERVER_MASK
        assert _mask(status, "CapBnd") == FILE_SERVER_MASK
        assert status["NoNewPrivs"].strip() == "1"
        assert status["Seccomp"].strip() == "2"
    finally:
        status_code, _, err = probe.finish()
    assert status_code == 0, err


@root_only
def test_unprivileged_chroot_is_refused_with_a_reason(share: Path) -> None:
    os.chmod(share.parent, 0o755)
    os.chown(share, 65534, 65534)
    probe = Probe("chroot", "kill", share, user=65534)
    status, _, err = probe.finish()
    assert status == 1
    assert "chroot mode needs root" in err


# -- refusals ----------------------------------------------------------------------------


def test_threads_started_first_are_refused(share: Path) -> None:
    code = (
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(2,), daemon=True).start()\n"
        "from fsd.sandbox import SandboxConfig, SandboxError, enter_sandbox\n"
        f"try: enter_sandbox(SandboxConfig({str(share)!r}))\n"
        "except SandboxError as exc: print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=fsd_env(), check=True
    ).stdout
    assert "threads are running" in out


def test_sharing_root_is_refused() -> None:
    code = (
        "from fsd.sandbox import SandboxConfig, SandboxError, enter_sandbox\n"
        "try: enter_sandbox(SandboxConfig('/'))\n"
        "except SandboxError as exc: print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=fsd_env(), check=True
    ).stdout
    assert "sharing / leaves nothing to sandbox" in out


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, FILE_SERVER_CAPABILITIES),
        ("+sys_admin", FILE_SERVER_CAPABILITIES | {"SYS_ADMIN"}),
        (
            "-mknod:+CAP_DAC_READ_SEARCH",
            (FILE_SERVER_CAPABILITIES - {"MKNOD"}) | {"DAC_READ_SEARCH"},
        ),
        ("+mknod:-mknod", FILE_SERVER_CAPABILITIES - {"MKNOD"}),
    ],
)
def test_modcaps_syntax(spec: str | None, expected: frozenset[str]) -> None:
    assert parse_modcaps(spec) == expected


@pytest.mark.parametrize("spec", ["", "sys_admin", "+", "+sys_admin:", "+nonsense", "*chown"])
def test_modcaps_errors(spec: str) -> None:
    with pytest.raises(CapabilityError, match="--modcaps"):
        parse_modcaps(spec)
