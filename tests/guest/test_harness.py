"""The guest harness itself: its initrd archive, its failure reports, its host steps.

These boots use QEMU's C virtiofsd whatever FSD_GUEST_BACKEND says: they test the harness,
so they must not depend on the backend under test.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fsd.testing.guest import (
    Backend,
    GuestImage,
    newc_archive,
    run_guest,
    running_backend,
    virtiofsd_command,
)


def test_newc_archive_is_read_by_cpio(tmp_path: Path) -> None:
    archive = newc_archive({"fsd/workload.sh": b"echo hi\n", "fsd/run.conf": b"TAG=x\n"})
    assert len(archive) % 4 == 0
    listing = subprocess.run(
        ["cpio", "-i", "-t", "--quiet"], input=archive, capture_output=True, check=True
    )
    assert listing.stdout.decode().split() == ["fsd", "fsd/run.conf", "fsd/workload.sh"]
    subprocess.run(["cpio", "-i", "-d", "--quiet"], input=archive, cwd=tmp_path, check=True)
    assert (tmp_path / "fsd" / "workload.sh").read_bytes() == b"echo hi\n"


@pytest.fixture
async def reference_backend(
    guest_image: GuestImage, socket_dir: Path, shared_dir: Path, tmp_path: Path
) -> AsyncIterator[Backend]:
    """QEMU's C virtiofsd (shipped with qemu-system-x86): a backend independent of fsd."""
    socket_path = socket_dir / "ref.sock"
    argv = virtiofsd_command(socket_path, shared_dir)
    async with running_backend(argv, socket_path, log_path=tmp_path / "ref.log") as running:
        yield running


@pytest.mark.guest
async def test_time_limit_kills_the_guest(
    guest_image: GuestImage, reference_backend: Backend
) -> None:
    # Wherever the guest is after 5 s (booting on a slow machine, or sleeping), it dies.
    result = await run_guest(
        "echo started; sleep 600", socket_path=reference_backend.socket_path, time_limit=5
    )
    assert result.timed_out
    assert result.exit_status is None
    assert result.qemu_returncode is not None  # killed, not left running
    assert result.output in ("", "started\n")
    assert result.total_seconds < 10


@pytest.mark.guest
async def test_mount_failure_is_reported(
    guest_image: GuestImage, reference_backend: Backend
) -> None:
    result = await run_guest(
        "echo never",
        socket_path=reference_backend.socket_path,
        mount_options="no_such_option",
        time_limit=60,
    )
    assert result.failure is not None
    assert "mount -t virtiofs" in result.failure
    assert result.exit_status is None
    assert not result.timed_out
    assert result.output == ""
    assert "mount -t virtiofs" in result.describe()


@pytest.mark.guest
async def test_host_steps_user_and_exit_status(
    guest_image: GuestImage, reference_backend: Backend
) -> None:
    steps: list[tuple[str, list[str]]] = []

    async def on_step(name: str, args: list[str]) -> str:
        steps.append((name, args))
        return "!refused" if name == "refuse" else f"done {name}"

    workload = r"""
    echo "first=$(host_step one a b)"
    if host_step refuse; then echo "refusal ignored"; fi
    echo "user=$(as_user id -u):$(as_user id -g):$(as_user id -G)"
    mkdir open && chmod 0777 open
    as_user touch open/made-by-user
    echo "owner=$(stat -c %u:%g open/made-by-user)"
    exit 7
    """
    result = await run_guest(
        workload, socket_path=reference_backend.socket_path, on_step=on_step, time_limit=60
    )
    assert result.exit_status == 7
    assert steps == [("one", ["a", "b"]), ("refuse", [])]
    assert result.steps == ["one", "refuse"]
    lines = result.output.splitlines()
    assert "first=done one" in lines
    assert "refusal ignored" not in lines
    assert "host step refuse failed: refused" in lines
    assert "user=1000:1000:1000 1001" in lines
    assert "owner=1000:1000" in lines
