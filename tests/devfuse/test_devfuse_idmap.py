"""``fsd mount --uid-map/--gid-map`` through the host kernel: a uid-1000 process (mapped to host
2000) creates files that are 2000:2000 on the host and 1000:1000 on the mount; host owners
outside the map show as 65534; chown to an unmapped id fails with EINVAL.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import fsd
from fsd.daemon import mount_syscalls
from fsd.fs import FsOptions
from fsd.fs.idmap import parse_id_maps
from fsd.testing.mount import devfuse_unavailable, force_unmount, mounted
from tests.devfuse.unprivileged import system_python

pytestmark = [
    pytest.mark.devfuse,
    pytest.mark.timeout(60, method="thread"),
    pytest.mark.skipif(devfuse_unavailable() is not None, reason=str(devfuse_unavailable())),
    pytest.mark.skipif(os.geteuid() != 0, reason="switching credentials needs root"),
]

MAP = "0 0 1,1000 2000 1"
SCRIPT = r"""
import os, sys
mnt = sys.argv[1]
with open(f"{mnt}/open/mine", "w") as f:
    f.write("from 1000\n")
os.mkdir(f"{mnt}/open/mydir")
for name in ("open/mine", "open/mydir", "host2000", "host3000"):
    st = os.stat(f"{mnt}/{name}")
    print(name, f"{st.st_uid}:{st.st_gid}")
print("read-own-0600", open(f"{mnt}/host2000").read().strip())
try:
    open(f"{mnt}/host3000").close()
    print("read-other-0600", "ok")
except PermissionError:
    print("read-other-0600", "denied")
"""


@pytest.fixture
def idmapped(share: Path) -> Iterator[Path]:
    """``fsd mount`` run as a process with the maps; SIGTERM (and a forced unmount) after."""
    os.chmod(share, 0o755)
    (share / "open").mkdir()
    os.chmod(share / "open", 0o777)
    for name, owner in (("host2000", 2000), ("host3000", 3000)):
        (share / name).write_text(f"owned by {owner}\n")
        os.chown(share / name, owner, owner)
        os.chmod(share / name, 0o600)
    # Under /tmp itself: pytest's tmp_path is not traversable by uid 1000.
    mountpoint = Path(tempfile.mkdtemp(prefix="fsd-idmap-"))
    os.chmod(mountpoint, 0o755)
    command = [sys.executable, "-m", "fsd", "mount", str(share), str(mountpoint)]
    command += ["--cfg", "timeout=0", "--uid-map", MAP, "--gid-map", MAP]
    repo = str(Path(fsd.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": repo}
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while not mount_syscalls.is_mount_point(str(mountpoint)):
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "timed out waiting for the mount"
            time.sleep(0.01)
        yield mountpoint
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=15)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            force_unmount(mountpoint)
            mountpoint.rmdir()


def test_a_mapped_user_through_the_host_kernel(idmapped: Path, share: Path) -> None:
    done = subprocess.run(
        [system_python(), "-c", SCRIPT, str(idmapped)],
        user=1000,
        group=1000,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    got = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert got == {
        "open/mine": "1000:1000",
        "open/mydir": "1000:1000",
        "host2000": "1000:1000",
        "host3000": "65534:65534",
        "read-own-0600": "owned by 2000",
        "read-other-0600": "denied",
    }
    for name in ("mine", "mydir"):
        st = os.lstat(share / "open" / name)
        assert (st.st_uid, st.st_gid) == (2000, 2000), name


def test_chown_through_the_mount(idmapped: Path, share: Path) -> None:
    target = idmapped / "host3000"
    os.chown(target, 1000, 1000)
    assert (os.stat(share / "host3000").st_uid, os.stat(share / "host3000").st_gid) == (2000, 2000)
    assert (os.stat(target).st_uid, os.stat(target).st_gid) == (1000, 1000)
    with pytest.raises(OSError, match="Invalid argument") as info:
        os.chown(target, 3000, -1)
    assert info.value.errno == errno.EINVAL
    assert os.stat(share / "host3000").st_uid == 2000


def test_refuses_a_bad_map(share: Path, tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    command = [sys.executable, "-m", "fsd", "mount", str(share), str(mountpoint)]
    repo = str(Path(fsd.__file__).resolve().parent.parent)
    done = subprocess.run(
        [*command, "--uid-map", "0 0 10,5 100 1"],
        env={**os.environ, "PYTHONPATH": repo},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "--uid-map '0 0 10,5 100 1'" in done.stderr
    assert "overlap on the inner (guest) side" in done.stderr
    assert not mount_syscalls.is_mount_point(str(mountpoint))


def test_guest_root_mapped_to_a_user_is_that_user_on_the_host(share: Path) -> None:
    """With ``--uid-map "0 1000 1"`` root on the mount is host 1000 for every check, not only
    for creates: it cannot open, chmod, chown, truncate or unlink host root's files."""
    os.chmod(share, 0o755)
    secret = share / "secret"
    secret.write_bytes(b"ROOT ONLY")
    os.chmod(secret, 0o600)
    (share / "mine").write_bytes(b"1000's")
    os.chown(share / "mine", 1000, 1000)
    maps = parse_id_maps("0 1000 1", "0 1000 1")
    with mounted(share, options=FsOptions(id_maps=maps)) as mount:
        target = mount.mountpoint / "secret"
        for attempt in (
            lambda: os.open(target, os.O_RDWR),
            lambda: os.open(target, os.O_RDONLY),
            lambda: os.truncate(target, 0),
            lambda: os.chmod(target, 0o4777),
            lambda: os.chown(target, 0, 0),
            lambda: os.unlink(target),
            lambda: os.rename(target, mount.mountpoint / "moved"),
            lambda: os.setxattr(target, "trusted.x", b"1"),
        ):
            with pytest.raises(PermissionError):
                attempt()
        os.chmod(mount.mountpoint / "mine", 0o640)  # its own file: as the host user may
        assert (mount.mountpoint / "mine").read_bytes() == b"1000's"
    st = os.stat(secret)
    assert (st.st_mode, st.st_uid, secret.read_bytes()) == (0o100600, 0, b"ROOT ONLY")
    assert os.listxattr(secret) == []
    assert os.stat(share / "mine").st_mode & 0o777 == 0o640
