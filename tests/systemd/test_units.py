"""contrib/systemd's fsd@.socket + fsd@.service under a real systemd (a user manager, see
user_manager.py): the socket unit listens, the VMM's connection starts the service, fsd
adopts the socket, READY=1 and STATUS= reach systemd, an ExecStartPost= allowlist command
runs once fsd is ready, the allowlist socket in the runtime directory answers, a file
created as guest uid 1000 belongs to host uid 1000 (setfsuid under the capability bounding
set and the system-call filter), the sandbox is in force, fsd exits cleanly when the VMM
leaves and the next VMM starts a new fsd."""

from __future__ import annotations

import os
import shutil
import stat
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsd.fuse.abi import ENTRY_OUT, IN_HEADER, OPEN_OUT, Opcode
from fsd.testing.frontend import VhostUserFrontend
from fsd.testing.guest import REPO_ROOT
from tests.systemd.user_manager import UserManager, running_user_manager, user_manager_unavailable
from tests.systemd.vmm import answer, fuse, init, init_and_look_up

UNITS = REPO_ROOT / "contrib" / "systemd"
NAME = "vm1"

#: linux/capability.h, for the capabilities fsd@.service keeps.
CAP_NUMBERS = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4,
    "SETGID": 6, "SETUID": 7, "SYS_RESOURCE": 24, "SYS_ADMIN": 21, "MKNOD": 27, "SETFCAP": 31,
}  # fmt: skip


@pytest.fixture(scope="module")
def manager() -> Iterator[UserManager]:
    reason = user_manager_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with running_user_manager() as running:
        yield running


@pytest.fixture
def installed(manager: UserManager) -> Iterator[Path]:
    """The units as shipped, plus a drop-in that only says where fsd is (this interpreter's
    scripts) and where its output goes; the configuration file names a share under /run
    (the service has a private /tmp). Returns the share."""
    bindir = Path(sys.executable).parent
    if shutil.which("fsd", path=str(bindir)) is None:
        pytest.fail(f"no fsd script next to {sys.executable}: run `make venv`")
    for unit in ("fsd@.socket", "fsd@.service"):
        shutil.copy(UNITS / unit, manager.unit_dir / unit)
    dropin = manager.unit_dir / "fsd@.service.d"
    dropin.mkdir(exist_ok=True)
    log = manager.runtime_dir / "fsd-%i.log"
    control = manager.runtime_dir / "fsd" / NAME / "allowlist.sock"
    (dropin / "test.conf").write_text(
        f"[Service]\nExecSearchPath={bindir}:/usr/bin:/bin\n"
        f"StandardOutput=append:{log}\nStandardError=append:{log}\n"
        # As docs/systemd.md suggests: Type=notify runs this once fsd is ready.
        f"ExecStartPost=fsd allowlist --socket {control} add /hello.txt\n"
    )
    share = manager.runtime_dir / "share"
    share.mkdir()
    os.chmod(share, 0o777)
    (share / "hello.txt").write_bytes(b"hello from the host\n")
    (manager.config_dir / "fsd").mkdir(exist_ok=True)
    (manager.config_dir / "fsd" / f"{NAME}.conf").write_text(
        f"SHARED_DIR={share}\nFSD_OPTIONS=--allowlist-socket-path {control} --log-level debug\n"
    )
    manager.systemctl("daemon-reload")
    yield share
    manager.systemctl("stop", f"fsd@{NAME}.socket", f"fsd@{NAME}.service", check=False)
    manager.systemctl("reset-failed", check=False)
    shutil.rmtree(share, ignore_errors=True)


def allowlist(manager: UserManager, *args: str) -> str:
    control = manager.runtime_dir / "fsd" / NAME / "allowlist.sock"
    result = subprocess.run(
        [sys.executable, "-m", "fsd", "allowlist", "--socket", str(control), *args],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return result.stdout


def create_as(fe: VhostUserFrontend, name: bytes, uid: int, gid: int, data: bytes) -> None:
    """CREATE and WRITE as the guest user ``uid``:``gid`` (the in_header's ids)."""
    create_in = struct.pack("<IIII", os.O_WRONLY | os.O_CREAT, 0o640, 0o022, 0)
    body = create_in + name + b"\0"
    header = IN_HEADER.pack(IN_HEADER.size + len(body), Opcode.CREATE, 20, 1, uid, gid, 1, 0, 0)
    out = answer(fe, header + body)
    nodeid = ENTRY_OUT.unpack_from(out)[0]
    fh = OPEN_OUT.unpack_from(out, ENTRY_OUT.size)[0]
    write_in = struct.pack("<QQIIQII", fh, 0, len(data), 0, 0, 0, 0)
    written = answer(fe, fuse(Opcode.WRITE, 22, nodeid, write_in + data))
    assert struct.unpack_from("<I", written)[0] == len(data)


def bounding_set_of_the_unit() -> set[str]:
    """CapabilityBoundingSet= as fsd@.service ships it."""
    for line in (UNITS / "fsd@.service").read_text().splitlines():
        if line.startswith("CapabilityBoundingSet="):
            return {c.removeprefix("CAP_") for c in line.split("=", 1)[1].split()}
    raise AssertionError("fsd@.service has no CapabilityBoundingSet=")


def proc_status(pid: str) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def test_socket_unit_starts_fsd_on_connection(manager: UserManager, installed: Path) -> None:
    socket_unit, service = f"fsd@{NAME}.socket", f"fsd@{NAME}.service"
    vhost = manager.runtime_dir / "fsd" / f"{NAME}.sock"
    manager.systemctl("start", socket_unit)
    assert manager.show(socket_unit, "ActiveState") == "active"
    assert stat.S_IMODE(os.lstat(vhost).st_mode) == 0o600
    assert manager.show(service, "ActiveState") == "inactive"  # nothing runs until a VMM comes

    fe = VhostUserFrontend(str(vhost))
    try:
        fe.start()  # answered: systemd started fsd, which took the socket
        manager.wait_for(service, "ActiveState", "active")  # Type=notify: after READY=1
        manager.wait_for(service, "StatusText", f"serving the front-end (pid {os.getpid()})")
        # ExecStartPost= added /hello.txt after READY=1, through the allowlist socket in the
        # service's RuntimeDirectory, which answers from outside too.
        assert allowlist(manager, "list").strip() == '{"Paths":["/hello.txt"]}'
        assert init_and_look_up(fe, b"hello.txt") == len(b"hello from the host\n")
    finally:
        fe.close()
    manager.wait_for(service, "ActiveState", "inactive")
    assert manager.show(service, "Result") == "success"
    assert manager.show(service, "ExecMainStatus") == "0"
    log = (manager.runtime_dir / f"fsd-{NAME}.log").read_text()
    assert f"vhost-user: listening on {vhost}" in log

    # The next VMM starts a new fsd on the same socket, with a new (empty) allowlist.
    fe = VhostUserFrontend(str(vhost))
    try:
        fe.start()
        manager.wait_for(service, "ActiveState", "active")
        pid = manager.show(service, "MainPID")
        allowlist(manager, "add", "/from-guest")
        init(fe)
        create_as(fe, b"from-guest", 1000, 1000, b"written as guest uid 1000\n")
        created = os.lstat(installed / "from-guest")
        assert (created.st_uid, created.st_gid) == (1000, 1000)
        assert (installed / "from-guest").read_bytes() == b"written as guest uid 1000\n"

        status = proc_status(pid)
        bounding = int(status["CapBnd"], 16)
        # What the unit keeps, of what the manager itself has (this machine's bounding set
        # lacks CAP_SYS_RESOURCE, for one).
        kept = sum(1 << CAP_NUMBERS[c] for c in bounding_set_of_the_unit())
        assert bounding == kept & int(proc_status("self")["CapBnd"], 16), hex(bounding)
        assert status["NoNewPrivs"] == "1"
        assert status["Seccomp"] == "2"  # the SystemCallFilter= is in force
        # A private /tmp and no network but loopback: the sandbox is on.
        assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    finally:
        fe.close()
    manager.wait_for(service, "ActiveState", "inactive")
    assert manager.show(service, "Result") == "success"

    manager.systemctl("stop", socket_unit)
    assert not vhost.exists()  # RemoveOnStop=


def test_stop_while_serving_is_a_clean_exit(manager: UserManager, installed: Path) -> None:
    """``systemctl stop`` sends SIGTERM: fsd says STOPPING=1 and exits 0 while the VMM is
    still connected."""
    socket_unit, service = f"fsd@{NAME}.socket", f"fsd@{NAME}.service"
    vhost = manager.runtime_dir / "fsd" / f"{NAME}.sock"
    manager.systemctl("start", socket_unit)
    fe = VhostUserFrontend(str(vhost))
    try:
        fe.start()
        manager.wait_for(service, "ActiveState", "active")
        manager.systemctl("stop", service)
        assert manager.show(service, "Result") == "success"
        assert manager.show(service, "ExecMainStatus") == "0"
        fe.sock.settimeout(10)
        assert fe.sock.recv(1) == b""  # fsd has closed the connection
    finally:
        fe.close()
    log = (manager.runtime_dir / f"fsd-{NAME}.log").read_text()
    assert "SIGTERM: shutting down" in log
