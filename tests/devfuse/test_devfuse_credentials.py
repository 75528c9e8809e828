"""Through the host kernel: a non-root user on an fsd mount owns what it creates, and the host
denies what that user may not do (the process runs as uid/gid 1000 without groups).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsd.testing.mount import Mount, devfuse_unavailable, mounted

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


def _system_python() -> str:
    """A Python the unprivileged user can run (the venv's may live under /root)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate):
            return candidate
    found = shutil.which("python3", path="/usr/bin:/bin")
    if found is None:
        pytest.skip("no system python3 for the unprivileged user")
    return found


def test_a_non_root_user_creates_as_itself(user_mount: Mount, share: Path) -> None:
    done = subprocess.run(
        [_system_python(), "-c", SCRIPT, str(user_mount.mountpoint)],
        user=USER,
        group=USER,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    results = dict(line.split(" ", 1) for line in done.stdout.splitlines())
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
