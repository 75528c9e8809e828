"""The device as QEMU configures it beyond the defaults: several request queues and large
queues (so Linux sends 1 MiB requests in one chain)."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest
import trio

from fsd.testing.guest import (
    Backend,
    GuestImage,
    GuestRunner,
    fsd_env,
    fsd_serve_command,
    run_guest,
    running_backend,
)

pytestmark = pytest.mark.guest

WORKLOAD = r"""
set -e
dd if=/dev/urandom of=data.bin bs=1M count=8 2>/dev/null
sync
echo 3 > /proc/sys/vm/drop_caches
echo "md5=$(md5sum data.bin | cut -d' ' -f1)"
dd if=data.bin of=/dev/null bs=1M iflag=direct 2>/dev/null
ls -l > /dev/null
"""


async def test_several_request_queues_and_large_queues(
    run_in_guest: GuestRunner, shared_dir: Path, backend: Backend
) -> None:
    """QEMU's num-request-queues=4 with queue-size=1024: QEMU asks the back-end for 5 queues
    and starts them all (the guest kernel may use only the first: what it sends must work)."""
    result = await run_in_guest(WORKLOAD, fs_device_options="num-request-queues=4,queue-size=1024")
    got = dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line)
    assert got["md5"] == hashlib.md5((shared_dir / "data.bin").read_bytes()).hexdigest()
    log = backend.log()
    for index in range(5):
        assert f"queue {index} stopped" in log, log[-2000:]


async def test_polling_queue_workers(
    guest_image: GuestImage, socket_dir: Path, shared_dir: Path, tmp_path: Path
) -> None:
    """``fsd serve --poll-max-ns``: the queue workers spin for the next kick before they
    sleep; the guest's data arrives intact, and the workers did catch kicks while spinning
    (a limit of 5 ms catches nearly every request of a TCG guest)."""
    if os.environ.get("FSD_GUEST_BACKEND", "fsd") != "fsd":
        pytest.skip("--poll-max-ns is fsd's")
    socket_path = socket_dir / "fs.sock"
    argv = fsd_serve_command(socket_path, shared_dir, "--poll-max-ns", "5000000")
    async with running_backend(
        argv, socket_path, log_path=tmp_path / "backend.log", env=fsd_env()
    ) as backend:
        result = await run_guest(WORKLOAD, socket_path=socket_path, guest_image=guest_image)
        assert result.exit_status == 0, f"{result.describe()}\n{backend.log()}"
        await trio.sleep(0.2)  # the queues' stop lines come once QEMU has gone
    got = dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line)
    assert got["md5"] == hashlib.md5((shared_dir / "data.bin").read_bytes()).hexdigest()
    caught = [int(n) for n in re.findall(r"(\d+) waits caught while polling", backend.log())]
    assert caught and sum(caught) > 0, backend.log()[-2000:]
