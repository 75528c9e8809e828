"""``fsd mount`` as a process: refuses unusable mount points, unmounts on SIGTERM/SIGINT."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import fsd
from fsd.daemon import mount_syscalls
from fsd.testing.mount import devfuse_unavailable, force_unmount, mounted
from fsd.testing.posix_acl import DEFAULT, one_user_acl
from tests.devfuse.unprivileged import system_python

pytestmark = [
    pytest.mark.devfuse,
    pytest.mark.timeout(60, method="thread"),
    pytest.mark.skipif(devfuse_unavailable() is not None, reason=str(devfuse_unavailable())),
]

_REPO = str(Path(fsd.__file__).resolve().parent.parent)


def _command(*args: str, module: str = "fsd mount") -> list[str]:
    return [sys.executable, "-m", *module.split(), *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": _REPO}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(*args), env=_env(), capture_output=True, text=True, timeout=30, check=False
    )


def _wait_until(predicate: object, what: str, timeout: float = 15.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@contextlib.contextmanager
def _mounted(argv: list[str], mountpoint: Path) -> Iterator[subprocess.Popen[str]]:
    """``fsd mount`` started and waited for until ``mountpoint`` is mounted; killed at the end
    if the test left it running."""
    process = subprocess.Popen(argv, env=_env(), stderr=subprocess.PIPE, text=True)
    try:
        _wait_until(lambda: mount_syscalls.is_mount_point(str(mountpoint)), "the mount")
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture
def mountpoint(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "mnt"
    path.mkdir()
    yield path
    force_unmount(path)


def test_refuses_a_mountpoint_that_is_a_file(share: Path, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = _run(str(share), str(not_a_dir))
    assert result.returncode != 0
    assert "is not a directory" in result.stderr
    assert not mount_syscalls.is_mount_point(str(not_a_dir))


def test_refuses_a_missing_mountpoint(share: Path, tmp_path: Path) -> None:
    result = _run(str(share), str(tmp_path / "missing"))
    assert result.returncode != 0
    assert "does not exist" in result.stderr


def test_refuses_a_shared_dir_that_is_not_a_directory(tmp_path: Path, mountpoint: Path) -> None:
    result = _run(str(tmp_path / "missing"), str(mountpoint))
    assert result.returncode != 0
    assert "shared directory" in result.stderr
    assert not mount_syscalls.is_mount_point(str(mountpoint))


def test_refuses_a_mountpoint_inside_the_share(share: Path) -> None:
    inside = share / "sub"
    inside.mkdir()
    result = _run(str(share), str(inside))
    assert result.returncode != 0
    assert "inside the shared directory" in result.stderr


def test_refuses_an_already_mounted_mountpoint(share: Path, mountpoint: Path) -> None:
    with mounted(share, mountpoint):
        result = _run(str(share), str(mountpoint))
        assert result.returncode != 0
        assert "already a mount point" in result.stderr
        assert os.listdir(mountpoint) == []


def test_refuses_an_unknown_cfg_key(share: Path, mountpoint: Path) -> None:
    result = _run(str(share), str(mountpoint), "--cfg", "cache=auto,bogus=1")
    assert result.returncode != 0
    assert "bogus" in result.stderr
    assert not mount_syscalls.is_mount_point(str(mountpoint))


@pytest.mark.parametrize(
    ("signum", "module"),
    [
        (signal.SIGTERM, "fsd mount"),
        (signal.SIGINT, "fsd mount"),
    ],
)
def test_signal_unmounts_and_exits_zero(
    share: Path, mountpoint: Path, signum: signal.Signals, module: str
) -> None:
    (share / "hello").write_text("hello")
    argv = _command(str(share), str(mountpoint), "--cfg", "timeout=0", module=module)
    with _mounted(argv, mountpoint) as process:
        assert (mountpoint / "hello").read_text() == "hello"
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr
    assert not mount_syscalls.is_mount_point(str(mountpoint))


def test_exits_zero_when_unmounted_from_outside(share: Path, mountpoint: Path) -> None:
    with _mounted(_command(str(share), str(mountpoint)), mountpoint) as process:
        os.listdir(mountpoint)
        mount_syscalls.umount(str(mountpoint))
        _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr


def test_the_mount_applies_no_umask_of_its_own(share: Path, mountpoint: Path) -> None:
    """The kernel already applied the caller's umask: ``fsd mount`` (started with umask 022)
    must not apply its own on top (process set-up in the entry point)."""
    process = subprocess.Popen(
        ["sh", "-c", 'umask 022 && exec "$@"', "sh", *_command(str(share), str(mountpoint))],
        env=_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_until(lambda: mount_syscalls.is_mount_point(str(mountpoint)), "the mount")
        old = os.umask(0)
        try:
            os.close(os.open(mountpoint / "f", os.O_CREAT | os.O_WRONLY, 0o666))
            os.mkdir(mountpoint / "d", 0o777)
        finally:
            os.umask(old)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert stat.S_IMODE((share / "f").stat().st_mode) == 0o666
    assert stat.S_IMODE((share / "d").stat().st_mode) == 0o777


def test_threads_serve_the_mount_together(share: Path, mountpoint: Path) -> None:
    """``--threads 4``: four workers read /dev/fuse (sharing the session's fd inside the
    sandbox, where /dev/fuse cannot be opened again to clone it), and requests from four
    host threads at once are all answered."""
    from concurrent.futures import ThreadPoolExecutor

    from fsd.testing.serve import server_pid

    for i in range(40):
        (share / f"f{i}").write_text(str(i))
    argv = _command(str(share), str(mountpoint), "--threads", "4", "--cfg", "timeout=0")
    with _mounted(argv, mountpoint) as process:
        with ThreadPoolExecutor(4) as pool:
            texts = list(pool.map(lambda i: (mountpoint / f"f{i}").read_text(), range(40)))
        assert texts == [str(i) for i in range(40)]
        server = server_pid(process.pid)
        names = [
            Path(f"/proc/{server}/task/{task}/comm").read_text().strip()
            for task in os.listdir(f"/proc/{server}/task")
        ]
        assert sum(name.startswith("fsd-fuse-") for name in names) == 4, names
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr
    # Polling is on by default, for the first worker only (the others would spin in vain).
    assert "fuse worker 0: " in stderr and "fuse worker 1: " not in stderr, stderr


def test_threads_must_be_at_least_one(share: Path, mountpoint: Path) -> None:
    result = _run(str(share), str(mountpoint), "--threads", "0")
    assert result.returncode == 2
    assert "--threads" in result.stderr and "at least 1" in result.stderr


def test_poll_max_ns_workers_catch_requests_while_spinning(share: Path, mountpoint: Path) -> None:
    """``--poll-max-ns``: after each reply the worker spins for the next request before it
    sleeps; a program that waits for each reply gets its requests caught awake (a 5 ms limit
    catches nearly all), and the files are right."""
    argv = _command(str(share), str(mountpoint), "--poll-max-ns", "5000000")
    with _mounted(argv, mountpoint) as process:
        for i in range(100):
            (mountpoint / f"f{i}").write_text(str(i))
        assert [(share / f"f{i}").read_text() for i in range(100)] == [str(i) for i in range(100)]
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr
    counts = re.search(r"fuse worker 0: (\d+) waits caught while polling, (\d+) slept", stderr)
    assert counts is not None, stderr
    assert int(counts[1]) > int(counts[2]), stderr


def test_poll_max_ns_zero_never_spins(share: Path, mountpoint: Path) -> None:
    argv = _command(str(share), str(mountpoint), "--poll-max-ns", "0")
    with _mounted(argv, mountpoint) as process:
        (mountpoint / "f").write_text("x")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr
    assert (share / "f").read_text() == "x"
    assert "while polling" not in stderr


def test_poll_max_ns_must_be_a_count(share: Path, mountpoint: Path) -> None:
    result = _run(str(share), str(mountpoint), "--poll-max-ns", "-5")
    assert result.returncode == 2
    assert "--poll-max-ns" in result.stderr


@pytest.fixture
def user_mountpoint() -> Iterator[Path]:
    """A mount point another user can reach (tmp_path's parents are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="fsd-mnt-"))
    os.chmod(path, 0o755)
    yield path
    force_unmount(path)
    path.rmdir()


SANDBOXED_CREATES = r"""
import os, sys
mnt = sys.argv[1]
os.umask(0o077)
for path in ("team/f", "inherit/made", "plain"):
    open(os.path.join(mnt, path), "w").close()
print("created")
"""


def test_creates_in_the_sandbox_take_the_callers_group_and_umask(
    share: Path, user_mountpoint: Path
) -> None:
    """The calls behind CREATE_SUPP_GROUP (``setgroups``) and ``--posix-acl``'s umask
    (``unshare(CLONE_FS)``, ``umask``) pass the seccomp filter of a sandboxed mount: a
    uid-1000 process in group 1001 creates in a root:1001 0770 directory, and its umask 077
    gives way to a default ACL."""
    os.chmod(share, 0o777)
    (share / "team").mkdir()
    os.chown(share / "team", 0, 1001)
    os.chmod(share / "team", 0o770)
    (share / "inherit").mkdir(mode=0o777)
    os.chmod(share / "inherit", 0o777)
    os.setxattr(share / "inherit", DEFAULT, one_user_acl(7, 7, 7, 7, 7))
    mountpoint = user_mountpoint
    with _mounted(_command(str(share), str(mountpoint), "--posix-acl"), mountpoint) as process:
        done = subprocess.run(
            [system_python(), "-c", SANDBOXED_CREATES, str(mountpoint)],
            user=1000, group=1000, extra_groups=[1001],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    assert done.stdout.strip() == "created", done.stderr
    assert process.returncode == 0, stderr
    assert (share / "team" / "f").stat().st_uid == 1000
    assert (share / "inherit" / "made").stat().st_mode & 0o777 == 0o666
    assert (share / "plain").stat().st_mode & 0o777 == 0o600
