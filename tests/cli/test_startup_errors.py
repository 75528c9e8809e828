"""Every start-up error is one line that names the option, path or plugin involved and says
what to do; none is a traceback or an exception's repr (issue 10, item 5)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fsd", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def one_line(result: subprocess.CompletedProcess[str], prog: str = "fsd serve") -> str:
    """The single stderr line, checked to be one line from ``prog`` and no traceback."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{prog}: "), lines[0]
    assert "Traceback" not in result.stderr and "Error(" not in result.stderr
    return lines[0]


def serve(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    share = tmp_path / "share"
    share.mkdir(exist_ok=True)
    return run(
        "serve", "--socket-path", str(tmp_path / "s.sock"), "--shared-dir", str(share), *extra
    )


# (arguments after `fsd serve --socket-path S --shared-dir D`, words the line must contain)
SERVE_CASES = [
    (
        ["--plugin", "no_such_module:policy"],
        ["--plugin no_such_module:policy", "cannot import", "fsd plugins"],
    ),
    (["--plugin", "no-such-plugin"], ["--plugin no-such-plugin", "unknown plugin", "installed:"]),
    (
        ["--socket-group", "no-such-group"],
        ["--socket-group no-such-group", "no such group", "getent group"],
    ),
    (["--uid-map", ":0:1000:"], ["--uid-map ':0:1000:'", "3 numbers"]),
    (["--translate-gid", "squash:0:1:1"], ["--translate-gid", "unknown type 'squash'"]),
    (
        ["--uid-map", "0 0 1", "--translate-uid", "map:0:0:1"],
        ["--uid-map", "--translate-uid", "use one"],
    ),
    (["--cfg", "cache=sometimes"], ["--cfg 'cache=sometimes'", "never, auto, always, metadata"]),
    (["--cfg", "bogus=1"], ["--cfg 'bogus=1'", "'bogus'"]),
    (["--xattrmap", ":prefix:all:a:"], ["--xattrmap", "rule 1", "not closed"]),
    (["--sandbox", "jail"], ["--sandbox", "invalid choice: 'jail'", "--help"]),
    (["-o", "sandbox=jail"], ["-o sandbox=jail", "namespace, chroot, none"]),
    (["--security-label"], ["--security-label", "not supported", "leave the option out"]),
    (["--posix-acl", "--no-xattr"], ["posix_acl needs xattrs on"]),
    (
        ["--posix-acl", "--translate-uid", "map:0:0:1"],
        ["POSIX ACLs cannot be combined with --translate-uid", "--uid-map/--gid-map can"],
    ),
    (["--modcaps", "+bogus"], ["--modcaps", "unknown capability 'bogus'"]),
    (["--migration-mode", "file-handles"], ["--migration-mode", "cannot migrate"]),
    (["-o", "bogus"], ["-o bogus", "unknown option", "source="]),
    (["-o", "cache=sometimes"], ["-o cache=sometimes", "auto, always, none or metadata"]),
    (["-o", "source=/elsewhere"], ["--shared-dir", "-o source=", "use one"]),
    (["--rlimit-nofile", str(1 << 40)], ["--rlimit-nofile", "nr_open", "ask for less"]),
    (["--tag", "x" * 37], ["--tag", "36"]),
    (["--frobnicate"], ["unrecognized arguments: --frobnicate", "--help"]),
    (["--cache", "sometimes"], ["--cache", "invalid choice", "--help"]),
]


@pytest.mark.parametrize(
    ("extra", "words"), SERVE_CASES, ids=[" ".join(c[0])[:40] for c in SERVE_CASES]
)
def test_serve_refuses_with_one_line(tmp_path: Path, extra: list[str], words: list[str]) -> None:
    result = serve(tmp_path, *extra)
    assert result.returncode == 2
    line = one_line(result)
    for word in words:
        assert word in line, line
    assert not (tmp_path / "s.sock").exists()


def test_socket_path_in_a_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    result = run("serve", "--socket-path", str(missing / "fs.sock"), "--shared-dir", str(tmp_path))
    assert result.returncode == 2
    line = one_line(result)
    assert f"--socket-path {missing}/fs.sock: directory {missing} does not exist" in line
    assert "create it" in line


def test_allowlist_socket_in_a_missing_directory(tmp_path: Path) -> None:
    result = serve(tmp_path, "--allowlist-socket-path", str(tmp_path / "gone" / "ctl.sock"))
    assert result.returncode == 2
    assert f"--allowlist-socket-path {tmp_path}/gone/ctl.sock: directory" in one_line(result)


def test_a_socket_path_that_is_too_long(tmp_path: Path) -> None:
    result = serve(tmp_path, "--socket-path", str(tmp_path / ("s" * 120)))
    assert result.returncode == 2
    assert "longer than a Unix socket path may be" in one_line(result)


@pytest.mark.parametrize("form", ["--shared-dir", "-o"])
def test_missing_or_unusable_shared_dir(tmp_path: Path, form: str) -> None:
    missing = tmp_path / "missing"
    given = (
        ["--shared-dir", str(missing)] if form == "--shared-dir" else ["-o", f"source={missing}"]
    )
    result = run("serve", "--socket-path", str(tmp_path / "s.sock"), *given)
    assert result.returncode == 2
    line = one_line(result)
    assert str(missing) in line and "no such directory" in line
    (tmp_path / "file").write_text("x")
    result = run(
        "serve", "--socket-path", str(tmp_path / "s.sock"), "--shared-dir", str(tmp_path / "file")
    )
    assert "is not a directory" in one_line(result)


def test_no_shared_dir_and_no_socket(tmp_path: Path) -> None:
    result = run("serve", "--socket-path", str(tmp_path / "s.sock"))
    assert "no shared directory: give --shared-dir DIR (or -o source=DIR)" in one_line(result)
    result = run("serve", "--shared-dir", str(tmp_path))
    assert "no vhost-user socket: give --socket-path PATH or --fd N" in one_line(result)


def test_a_socket_path_held_by_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "s.sock").write_text("not a socket")
    result = serve(tmp_path)
    assert result.returncode == 2
    line = one_line(result)
    assert f"{tmp_path}/s.sock" in line and "not a socket" in line
    assert (tmp_path / "s.sock").read_text() == "not a socket"


def test_a_socket_another_server_listens_on(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(tmp_path / "s.sock"))
        other.listen(1)
        result = serve(tmp_path)
    assert result.returncode == 2
    line = one_line(result)
    assert f"{tmp_path}/s.sock" in line and "another server is listening" in line


# --- fsd mount ---------------------------------------------------------------------------------


def test_mount_with_a_bad_plugin(tmp_path: Path) -> None:
    (tmp_path / "share").mkdir()
    (tmp_path / "mnt").mkdir()
    result = run("mount", str(tmp_path / "share"), str(tmp_path / "mnt"), "--plugin", "nope:x")
    assert result.returncode == 2
    assert "--plugin nope:x: cannot import it" in one_line(result, "fsd mount")


def test_mount_refuses_a_missing_mount_point(tmp_path: Path) -> None:
    result = run("mount", str(tmp_path), str(tmp_path / "missing"))
    assert result.returncode == 2
    assert "does not exist" in one_line(result, "fsd mount")


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory anyone may enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="fsd-open-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m fsd ARGV`` as uid/gid 65534, with the system Python (the venv's may be
    unreadable to others) and this checkout and its installed packages on the path."""
    site = next(p for p in sys.path if p.endswith("site-packages"))
    return subprocess.run(
        ["/usr/bin/python3", "-m", "fsd", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        user=65534,
        group=65534,
        extra_groups=[],
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{REPO}:{site}"},
    )


needs_root_and_system_python = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"),
    reason="runs fsd as another user: needs root and /usr/bin/python3",
)


@needs_root_and_system_python
def test_mount_as_a_user_without_dev_fuse_access(open_dir: Path) -> None:
    if (
        os.access("/dev/fuse", os.R_OK | os.W_OK, effective_ids=False)
        and os.stat("/dev/fuse").st_mode & 0o006
    ):
        pytest.skip("/dev/fuse is open to everyone here")
    (open_dir / "share").mkdir()
    (open_dir / "mnt").mkdir()
    result = _as_nobody("mount", str(open_dir / "share"), str(open_dir / "mnt"))
    assert result.returncode == 2, result.stderr
    line = one_line(result, "fsd mount")
    assert "cannot open /dev/fuse: permission denied" in line
    assert "mode 0666" in line and "run fsd mount as root" in line


@needs_root_and_system_python
def test_mandatory_file_handles_without_the_capability(open_dir: Path) -> None:
    os.chmod(open_dir, 0o777)
    (open_dir / "share").mkdir()
    result = _as_nobody(
        "serve", "--socket-path", str(open_dir / "s.sock"), "--shared-dir",
        str(open_dir / "share"), "--inode-file-handles", "mandatory",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    line = one_line(result)
    assert "--inode-file-handles mandatory: Operation not permitted" in line
    assert "run as root" in line


def test_a_socket_systemd_passed_is_not_another_server(tmp_path: Path) -> None:
    """Socket activation: the unit's listener sits at the path; the pre-check lets it be
    (the daemon adopts it). Here fd 3 is that listener, as systemd passes it."""
    code = (
        "import os, socket, sys\n"
        "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1)\n"
        "os.environ['LISTEN_PID'] = str(os.getpid()); os.environ['LISTEN_FDS'] = '1'\n"
        "from fsd.cli.arguments import check_socket_path\n"
        "check_socket_path('--socket-path', sys.argv[1]); print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "s.sock")],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.stdout == "ok\n", done.stderr
