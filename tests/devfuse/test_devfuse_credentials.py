"""Through the host kernel: a non-root user on an fsd mount owns what it creates, and the host
denies what that user may not do (the process runs as uid/gid 1000 without groups).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsd.fs import FsOptions
from fsd.testing.mount import Mount, devfuse_unavailable, mounted
from tests.devfuse.unprivileged import system_python

USER = 1000

SCRIPT = r"""
import os, sys
mnt = sys.argv[1]
def attempt(label, fn):
    try:
        fn()
        print(label, "ok")
    except OSError as e:
        print(label, os.strerror(e.errno))
attempt("mkdir", lambda: os.mkdir(f"{mnt}/open/dir"))
attempt("create", lambda: open(f"{mnt}/open/file", "w").close())
attempt("symlink", lambda: os.symlink("file", f"{mnt}/open/link"))
attempt("mkfifo", lambda: os.mkfifo(f"{mnt}/open/fifo"))
attempt("create-in-root-dir", lambda: open(f"{mnt}/rootonly/file", "w").close())
attempt("mkdir-in-root-dir", lambda: os.mkdir(f"{mnt}/rootonly/dir"))
attempt("write-root-file", lambda: open(f"{mnt}/rootonly/existing", "a").close())
"""


def run_as_user(script: str, mountpoint: Path, groups: list[int] | None = None) -> dict[str, str]:
    """``script`` run with the mount point as uid/gid 1000 (and ``groups``); its "LABEL
    result" lines as a dict."""
    done = subprocess.run(
        [system_python(), "-c", script, str(mountpoint)],
        user=USER,
        group=USER,
        extra_groups=groups or [],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return dict(line.split(" ", 1) for line in done.stdout.splitlines())


@pytest.fixture
def user_mount(share: Path) -> Iterator[Mount]:
    reason = devfuse_unavailable()
    if reason is not None:
        pytest.skip(reason)
    os.chmod(share, 0o755)
    (share / "open").mkdir(mode=0o777)
    os.chmod(share / "open", 0o777)
    (share / "rootonly").mkdir(mode=0o755)
    os.chmod(share / "rootonly", 0o755)
    (share / "rootonly" / "existing").write_text("root's\n")
    os.chmod(share / "rootonly" / "existing", 0o644)
    with mounted(share) as mount:  # the mount point is a fresh directory in /tmp
        os.chmod(mount.mountpoint, 0o755)
        yield mount


def test_a_non_root_user_creates_as_itself(user_mount: Mount, share: Path) -> None:
    results = run_as_user(SCRIPT, user_mount.mountpoint)
    denied = os.strerror(13)
    assert results == {
        "mkdir": "ok",
        "create": "ok",
        "symlink": "ok",
        "mkfifo": "ok",
        "create-in-root-dir": denied,
        "mkdir-in-root-dir": denied,
        "write-root-file": denied,
    }
    for name in ("dir", "file", "link", "fifo"):
        st = os.lstat(share / "open" / name)
        assert (st.st_uid, st.st_gid) == (USER, USER), name
    assert sorted(os.listdir(share / "rootonly")) == ["existing"]


GROUP_SCRIPT = r"""
import os, sys
mnt = sys.argv[1]
for label, fn in (
    ("create", lambda: open(f"{mnt}/team/file", "w").close()),
    ("mkdir", lambda: os.mkdir(f"{mnt}/team/dir")),
    ("symlink", lambda: os.symlink("file", f"{mnt}/team/link")),
    ("mkfifo", lambda: os.mkfifo(f"{mnt}/team/fifo")),
):
    try:
        fn()
        print(label, "ok")
    except OSError as e:
        print(label, os.strerror(e.errno))
"""


def test_a_supplementary_group_lets_the_user_create(user_mount: Mount, share: Path) -> None:
    """A directory writable only by group 1001, which the user has as a supplementary group:
    the kernel (6.3 and later) sends that group with each create (CREATE_SUPP_GROUP), and
    the host checks the create with it."""
    (share / "team").mkdir()
    os.chown(share / "team", 0, 1001)
    os.chmod(share / "team", 0o770)
    results = run_as_user(GROUP_SCRIPT, user_mount.mountpoint, groups=[1001])
    if _kernel() < (6, 3) and results["create"] != "ok":
        pytest.skip("this kernel sends no supplementary group (CREATE_SUPP_GROUP: Linux 6.3)")
    assert results == dict.fromkeys(["create", "mkdir", "symlink", "mkfifo"], "ok")
    for name in ("file", "dir", "link", "fifo"):
        st = os.lstat(share / "team" / name)
        assert (st.st_uid, st.st_gid) == (USER, USER), name


def _kernel() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


RACE_SCRIPT = r"""
import os, sys
path = sys.argv[1]
print("absent", not os.path.exists(path), flush=True)  # the kernel caches a negative entry
sys.stdin.readline()  # the host has made the file meanwhile
for flags in (os.O_RDWR | os.O_CREAT, os.O_RDWR | os.O_CREAT | os.O_TRUNC):
    try:
        fd = os.open(path, flags, 0o644)
        print("opened", os.read(fd, 100), flush=True)
    except OSError as e:
        print("refused", os.strerror(e.errno), flush=True)
"""


def test_create_over_a_name_the_kernel_thought_absent(share: Path) -> None:
    """The kernel sends CREATE (not OPEN) for a name it cached as absent: checking nothing
    itself, so the host must refuse a root-only file the caller could not open."""
    reason = devfuse_unavailable()
    if reason is not None:
        pytest.skip(reason)
    os.chmod(share, 0o777)  # not sticky: fs.protected_regular would refuse on its own
    with mounted(share, options=FsOptions(negative_timeout=30)) as mount:
        child = subprocess.Popen(
            [system_python(), "-c", RACE_SCRIPT, str(mount.mountpoint / "secret")],
            user=USER,
            group=USER,
            extra_groups=[],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "absent True"
        secret = share / "secret"
        secret.write_bytes(b"ROOT ONLY")
        os.chmod(secret, 0o600)
        out, err = child.communicate("go\n", timeout=60)
        assert child.returncode == 0, err
    denied = os.strerror(13)
    assert out.splitlines() == [f"refused {denied}", f"refused {denied}"]
    assert secret.read_bytes() == b"ROOT ONLY"
