"""docs/vmms.md's commands, run: the QEMU pair as written (TCG here), Kata's and
cloud-hypervisor's fsd command lines with a QEMU guest (neither VMM is installed here), the
crosvm-form command line started (no guest: QEMU 7.2 cannot take its config space). The
libvirt blocks run in test_libvirt.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import trio

from fsd.testing.guest import (
    GuestImage,
    fsd_env,
    parse_console,
    running_backend,
    write_workload_initrd,
)
from fsd.unix_sockets import is_listening
from tests.guest.docs_blocks import block, blocks, command
from tests.guest.replay import FSD_VHOST_USER, WORKLOAD, check_share, outcome, serve_guest

REPO = Path(__file__).resolve().parents[2]
RUN_HERE = {"qemu-fsd", "qemu", "kata-command", "cloud-hypervisor-fsd", "crosvm-fsd"}
RUN_ELSEWHERE = {"libvirt-memory", "libvirt-filesystem", "libvirt-9.0-command", "libvirt-json"}
NOT_RUN = {"kata-toml", "cloud-hypervisor", "crosvm"}  # (kata-toml is checked, not run)


def _fsd(argv: list[str]) -> list[str]:
    """``fsd``/``fsd-vhost-user`` from this checkout."""
    if argv[0] == "fsd":
        return [sys.executable, "-m", "fsd", *argv[1:]]
    assert argv[0] == "fsd-vhost-user"
    return [FSD_VHOST_USER, *argv[1:]]


def test_every_marked_block_is_accounted_for() -> None:
    assert set(blocks()) == RUN_HERE | RUN_ELSEWHERE | NOT_RUN


@pytest.fixture
def share(tmp_path: Path) -> Path:
    path = tmp_path / "share"
    path.mkdir()
    (path / "host.txt").write_text("from-host")
    return path


@pytest.mark.guest
async def test_qemu(guest_image: GuestImage, share: Path, socket_dir: Path, tmp_path: Path) -> None:
    sock = socket_dir / "share.sock"
    paths = {"/srv/share": str(share), "/run/fsd/share.sock": str(sock)}
    initrd = write_workload_initrd(tmp_path / "initrd.cpio", WORKLOAD, guest_image=guest_image)
    qemu = command("qemu", paths)
    qemu = [a.replace("accel=kvm:tcg", "accel=tcg") for a in qemu]  # KVM is unusable here
    qemu = [{"$KERNEL": str(guest_image.kernel), "$INITRD": str(initrd)}.get(a, a) for a in qemu]
    qemu[-1] += " panic=-1 quiet"
    fsd_argv = _fsd(command("qemu-fsd", paths))
    log = tmp_path / "fsd.log"
    async with running_backend(fsd_argv, sock, log_path=log, env=fsd_env()):
        with trio.fail_after(180):
            vm = await trio.run_process(
                [*qemu, "-no-reboot"], stdin=subprocess.DEVNULL, capture_stdout=True,
                capture_stderr=True, check=False,
            )  # fmt: skip
    err = log.read_text()
    console = vm.stdout.decode(errors="replace")
    output, status = parse_console(console)
    assert status == 0, f"{console}\n{vm.stderr.decode()}\n--- fsd ---\n{err}"
    check_share(share, dict(line.split("=", 1) for line in output.splitlines() if "=" in line))


def _kata_args(toml: dict[str, object], shared: str) -> list[str]:
    """The command line Kata's runtime builds (virtiofsd.go ``args``) from its config."""
    extra = toml.get("virtio_fs_extra_args", [])
    assert isinstance(extra, list)
    return [
        "--syslog", f"--cache={toml['virtio_fs_cache']}", f"--shared-dir={shared}", "--fd=3",
        "--inode-file-handles=prefer", *extra,
    ]  # fmt: skip


@pytest.mark.guest
async def test_kata(guest_image: GuestImage, share: Path, socket_dir: Path, tmp_path: Path) -> None:
    toml = tomllib.loads(block("kata-toml"))
    assert toml["virtio_fs_daemon"] == "/usr/local/bin/fsd-vhost-user"
    documented_share = "/run/kata-containers/shared/sandboxes/ID/shared"
    documented = command("kata-command", {})
    assert documented == ["fsd-vhost-user", *_kata_args(toml, documented_share)]
    argv = _fsd(command("kata-command", {documented_share: str(share)}))
    result, backend = await serve_guest(argv, socket_dir / "fs.sock", tmp_path, guest_image, True)
    check_share(share, outcome(result, backend))


@pytest.mark.guest
async def test_cloud_hypervisor(guest_image: GuestImage, socket_dir: Path, tmp_path: Path) -> None:
    share = tmp_path / "shared_dir"
    share.mkdir()
    (share / "host.txt").write_text("from-host")
    sock = socket_dir / "virtiofs"
    argv = _fsd(
        command("cloud-hypervisor-fsd", {"/tmp/virtiofs": str(sock), "/tmp/shared_dir": str(share)})
    )
    result, backend = await serve_guest(argv, sock, tmp_path, guest_image, False)
    check_share(share, outcome(result, backend))


def test_crosvm_command_starts(share: Path, socket_dir: Path) -> None:
    sock, ctl = socket_dir / "fs.sock", socket_dir / "fs-allowlist.sock"
    paths = {"/srv/share": str(share), "/tmp/fs.sock": str(sock)}
    paths["/tmp/fs-allowlist.sock"] = str(ctl)
    daemon = subprocess.Popen(
        _fsd(command("crosvm-fsd", paths)), stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not (is_listening(sock) and ctl.exists()):
            assert daemon.poll() is None, daemon.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=20)
    assert daemon.returncode == 0, err
    assert f"control socket listening on {ctl}" in err
    assert f"listening on {sock}" in err
