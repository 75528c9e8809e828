"""Guest test fixtures: the test bed (``guest_image``, built once per session) and a backend.

The backend is ``python -m fsd serve`` unless FSD_GUEST_BACKEND=virtiofsd asks for QEMU's C
virtiofsd, the reference backend these tests were first made to pass against.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from fsd.testing.guest import (
    Backend,
    FsdServing,
    GuestError,
    GuestImage,
    GuestResult,
    GuestRunner,
    build_testbed,
    fsd_env,
    fsd_serve_command,
    run_guest,
    running_backend,
    virtiofsd_command,
)


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    """Build (or find up to date) the kernel and initramfs; only x86_64 Linux can run them."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        pytest.skip("the guest test bed needs an x86_64 Linux host")
    return build_testbed()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory for Unix sockets (tmp_path can exceed the 108-byte sun_path limit)."""
    with tempfile.TemporaryDirectory(prefix="fsd-sock-") as path:
        yield Path(path)


@pytest.fixture
def shared_dir(tmp_path: Path) -> Path:
    """The host directory the backend shares with the guest."""
    path = tmp_path / "shared"
    path.mkdir()
    return path


def backend_command(socket_path: Path, shared_dir: Path) -> list[str]:
    """The backend selected by FSD_GUEST_BACKEND: fsd serve by default (in its sandbox, as
    by default), or QEMU's C virtiofsd."""
    which = os.environ.get("FSD_GUEST_BACKEND", "fsd")
    if which == "virtiofsd":
        return virtiofsd_command(socket_path, shared_dir)
    if which == "fsd":
        return fsd_serve_command(socket_path, shared_dir)
    raise pytest.UsageError(f"FSD_GUEST_BACKEND={which!r}: expected fsd or virtiofsd")


@pytest.fixture
async def backend(
    guest_image: GuestImage, socket_dir: Path, shared_dir: Path, tmp_path: Path
) -> AsyncIterator[Backend]:
    """A backend serving ``shared_dir``, listening before the test starts QEMU."""
    socket_path = socket_dir / "fs.sock"
    argv = backend_command(socket_path, shared_dir)
    log_path = tmp_path / "backend.log"
    async with running_backend(argv, socket_path, log_path=log_path, env=fsd_env()) as running:
        yield running


@pytest.fixture
def fsd_serving(
    guest_image: GuestImage, socket_dir: Path, shared_dir: Path, tmp_path: Path
) -> FsdServing:
    """For tests of an option: ``async with fsd_serving("--readonly") as backend``."""

    def serving(*args: str) -> AbstractAsyncContextManager[Backend]:
        socket_path = socket_dir / "fs.sock"
        argv = fsd_serve_command(socket_path, shared_dir, *args)
        log_path = tmp_path / "backend.log"
        return running_backend(argv, socket_path, log_path=log_path, env=fsd_env())

    return serving


@pytest.fixture
def run_in_guest(guest_image: GuestImage, backend: Backend) -> GuestRunner:
    """Boot the guest against ``backend``, run a workload, and insist that it exits 0."""

    async def run(workload: str, **options: Any) -> GuestResult:
        options.setdefault("time_limit", 180.0)
        result = await run_guest(
            workload, socket_path=backend.socket_path, guest_image=guest_image, **options
        )
        if result.exit_status != 0:
            raise GuestError(f"{result.describe()}\n--- backend log ---\n{backend.log()}")
        return result

    return run
