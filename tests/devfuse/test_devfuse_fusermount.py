"""``fsd mount`` as an ordinary user: through the setuid fusermount3 helper, as every libfuse
file system mounts (fsd.daemon.fusermount). Run for real as uid 1000: the mount appears with
the user's id, serves that user, is closed to others (root included) without allow_other,
refuses allow_other unless /etc/fuse.conf allows it, and goes away through ``fusermount3 -u``
when fsd stops or when the user unmounts it.

These machines keep /dev/fuse at mode 0600, where a stock Debian system has 0666 (and
fusermount3 opens it with the caller's rights): the tests that mount give it the stock mode
for their duration and put the old mode back.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsd.daemon import fusermount
from fsd.daemon.mount_syscalls import mount_points
from tests.devfuse.unprivileged import system_python
from tests.devfuse.user_site import copy_user_site

USER = 1000
FUSERMOUNT = fusermount.find_fusermount()


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the test switches to uid 1000 and changes /dev/fuse's mode: needs root"
    if not os.path.exists(fusermount.DEV_FUSE):
        return "/dev/fuse is missing"
    if FUSERMOUNT is None:
        return "fusermount3 is missing: contrib/setup-host.sh installs fuse3"
    return None


pytestmark = [
    pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason())),
    # A hang raises in the test, so that the fixtures still restore /dev/fuse and fuse.conf.
    pytest.mark.timeout(120),
]


# -- pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "allowed"),
    [
        ("", False),
        ("#user_allow_other\n", False),
        ("# user_allow_other - lets users use allow_other\n", False),
        ("user_allow_other\n", True),
        ("  user_allow_other   # on purpose\n", True),
        ("mount_max = 1000\nuser_allow_other", True),
        ("user_allow_other_not\n", False),
    ],
)
def test_fuse_conf_user_allow_other(text: str, allowed: bool) -> None:
    assert fusermount.allows_other_users(text) is allowed


def test_options_escape_the_source() -> None:
    options = fusermount.fusermount_options(
        "/srv/a,b\\c", "fsd", allow_other=False, default_permissions=True
    )
    assert options == "rw,nosuid,nodev,fsname=/srv/a\\,b\\\\c,subtype=fsd,default_permissions"
    assert fusermount.fusermount_options(
        "/s", "fsd", allow_other=True, default_permissions=False
    ).endswith(",subtype=fsd,allow_other")


# -- as uid 1000 -----------------------------------------------------------------------------


@pytest.fixture
def dev_fuse_mode() -> Iterator[None]:
    """Give /dev/fuse a mode of the test's choosing (``set_mode``) and always put the old one
    back."""
    original = stat.S_IMODE(os.stat(fusermount.DEV_FUSE).st_mode)
    try:
        yield
    finally:
        os.chmod(fusermount.DEV_FUSE, original)


@pytest.fixture
def stock_dev_fuse(dev_fuse_mode: None) -> None:
    """/dev/fuse as a stock Debian system has it: 0666."""
    os.chmod(fusermount.DEV_FUSE, 0o666)


@pytest.fixture
def fuse_conf() -> Iterator[Path]:
    """/etc/fuse.conf, put back as it was (or removed if it did not exist) afterwards."""
    path = Path(fusermount.FUSE_CONF)
    original = path.read_bytes() if path.exists() else None
    try:
        yield path
    finally:
        if original is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(original)


@pytest.fixture(scope="module")
def user_site() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fsd-user-site-") as d:
        os.chmod(d, 0o755)
        yield copy_user_site(Path(d) / "site")


@pytest.fixture
def user_dirs() -> Iterator[tuple[Path, Path]]:
    """A share and a mount point owned by the user, under /tmp (pytest's tmp_path is not
    traversable by uid 1000)."""
    with tempfile.TemporaryDirectory(prefix="fsd-user-mount-") as d:
        base = Path(d)
        share, mnt = base / "share", base / "mnt"
        share.mkdir()
        mnt.mkdir()
        (share / "hello.txt").write_bytes(b"hello, user\n")
        for path in (base, share, mnt, share / "hello.txt"):
            os.chown(path, USER, USER)
        os.chmod(base, 0o755)
        yield share, mnt
        if str(mnt) in mount_points():
            subprocess.run([FUSERMOUNT or "fusermount3", "-u", "-z", str(mnt)], check=False)


def as_user(argv: list[str], user_site: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        argv,
        user=USER,
        group=USER,
        extra_groups=[],
        env=user_env(user_site),
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )


def user_env(user_site: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(user_site), "HOME": "/tmp"}


def start_fsd_mount(user_site: Path, share: Path, mnt: Path) -> subprocess.Popen[str]:
    """``fsd mount SHARE MNT`` as uid 1000; returns once the mount is in the mount table."""
    proc = subprocess.Popen(
        [system_python(), "-m", "fsd", "mount", str(share), str(mnt)],
        user=USER,
        group=USER,
        extra_groups=[],
        env=user_env(user_site),
        cwd="/",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while mount_points().get(str(mnt)) != "fuse.fsd":
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"fsd mount did not mount ({proc.returncode}): {err}{out}")
        time.sleep(0.02)
    return proc


def mount_line(mnt: Path) -> list[str]:
    """The /proc/self/mountinfo fields of the mount at ``mnt``."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(mnt):
                return fields
    raise AssertionError(f"{mnt} is not mounted")


def root_lists(mnt: Path) -> tuple[int, str]:
    """``os.listdir(mnt)`` as root, in a child that a hung mount cannot take the test with."""
    result = subprocess.run(
        [sys.executable, "-c", "import os, sys; print(sorted(os.listdir(sys.argv[1])))", str(mnt)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.returncode, result.stdout + result.stderr


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return proc.returncode, err


USER_SCRIPT = textwrap.dedent(
    """
    import os, sys
    mnt = sys.argv[1]
    print(open(os.path.join(mnt, "hello.txt")).read(), end="")
    with open(os.path.join(mnt, "new.txt"), "w") as f:
        f.write("written by the user\\n")
    st = os.stat(os.path.join(mnt, "new.txt"))
    print(st.st_uid, st.st_gid)
    """
)


@pytest.mark.usefixtures("stock_dev_fuse")
def test_user_mounts_through_fusermount3(user_site: Path, user_dirs: tuple[Path, Path]) -> None:
    share, mnt = user_dirs
    proc = start_fsd_mount(user_site, share, mnt)
    try:
        fields = mount_line(mnt)
        options = fields[fields.index("-") + 3]
        assert f"user_id={USER}" in options and f"group_id={USER}" in options
        assert "allow_other" not in options
        assert fields[fields.index("-") + 2] == str(share)  # fsname: the source column
        assert {"nosuid", "nodev"} <= set(fields[5].split(","))

        result = as_user([system_python(), "-c", USER_SCRIPT, str(mnt)], user_site)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"hello, user\n{USER} {USER}\n"
        written = os.stat(share / "new.txt")
        assert (written.st_uid, written.st_gid) == (USER, USER)

        # Without allow_other the kernel keeps everyone else out, root included.
        status, output = root_lists(mnt)
        assert status == 1 and "PermissionError" in output
    finally:
        status, err = stop(proc)
    assert status == 0, err
    assert str(mnt) not in mount_points(), err  # fusermount3 -u took it away


@pytest.mark.usefixtures("stock_dev_fuse")
def test_user_unmounts_and_fsd_exits(user_site: Path, user_dirs: tuple[Path, Path]) -> None:
    share, mnt = user_dirs
    proc = start_fsd_mount(user_site, share, mnt)
    try:
        result = as_user([FUSERMOUNT or "fusermount3", "-u", str(mnt)], user_site)
        assert result.returncode == 0, result.stderr
        proc.wait(timeout=20)
    finally:
        status, err = stop(proc)
    assert status == 0, err


ALLOW_OTHER_SCRIPT = textwrap.dedent(
    """
    import sys, trio
    from fsd.daemon.devfuse import MountError, serve_mount

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: serve_mount(
                sys.argv[1], sys.argv[2], allow_other=True, task_status=task_status))
            print("mounted", flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)  # the loop keeps serving
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    except* MountError as group:
        print("refused:", group.exceptions[0])
    """
)


@pytest.mark.usefixtures("stock_dev_fuse")
def test_allow_other_needs_user_allow_other(
    user_site: Path, user_dirs: tuple[Path, Path], fuse_conf: Path
) -> None:
    share, mnt = user_dirs
    fuse_conf.write_text("# no user_allow_other here\n#user_allow_other\n")
    argv = [system_python(), "-c", ALLOW_OTHER_SCRIPT, str(share), str(mnt)]
    result = as_user(argv, user_site, input="")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("refused: allow_other")
    assert "/etc/fuse.conf has a line 'user_allow_other'" in result.stdout
    assert str(mnt) not in mount_points()

    fuse_conf.write_text("user_allow_other\n")
    proc = subprocess.Popen(
        argv,
        user=USER,
        group=USER,
        extra_groups=[],
        env=user_env(user_site),
        cwd="/",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == "mounted\n", proc.stderr
        assert "allow_other" in mount_line(mnt)[-1]
        assert root_lists(mnt) == (0, "['hello.txt']\n")  # root may use it now
    finally:
        _, err = proc.communicate(input="\n", timeout=20)
    assert proc.returncode == 0, err
    assert str(mnt) not in mount_points()


@pytest.mark.usefixtures("dev_fuse_mode")
def test_dev_fuse_closed_to_the_user_says_so(user_site: Path, user_dirs: tuple[Path, Path]) -> None:
    """With this machine's /dev/fuse (0600) the helper cannot open it for the user: one line
    saying so, and what mode it needs."""
    os.chmod(fusermount.DEV_FUSE, 0o600)
    share, mnt = user_dirs
    result = as_user([system_python(), "-m", "fsd", "mount", str(share), str(mnt)], user_site)
    assert result.returncode == 2  # refused at start-up, before fusermount3 is asked
    assert result.stderr.strip() == (
        "fsd mount: cannot open /dev/fuse: permission denied; give your user read and write "
        "access to it (mode 0666 on most systems) or run fsd mount as root"
    )
