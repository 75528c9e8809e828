"""The device as QEMU configures it beyond the defaults: several request queues and large
queues (so Linux sends 1 MiB requests in one chain)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fsd.testing.guest import Backend, GuestRunner

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
