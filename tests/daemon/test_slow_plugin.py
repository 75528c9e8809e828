"""A slow plugin holds up its own queue only: the hiprio queue keeps being served."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsd.allowlist.client import AllowlistClient
from fsd.testing import fuse_requests as fr
from fsd.testing.frontend import VhostUserFrontend
from fsd.testing.serve import ServeProcess
from fsd.vhost_user.messages import FrontendRequest as R
from fsd.virtio_fs import NUM_QUEUES


@pytest.fixture
def slow_frontend(shared_dir: Path, socket_path: Path) -> Iterator[VhostUserFrontend]:
    control = socket_path.with_name("ctl.sock")
    serve = ServeProcess(
        shared_dir,
        socket_path,
        "--plugin",
        "tests.daemon.slow_plugin:plugin",
        "--allowlist-socket-path",
        str(control),
    )
    fe = VhostUserFrontend(str(socket_path))
    try:
        yield fe
    finally:
        fe.close()
        serve.stop()


def test_slow_check_hook_does_not_hold_up_the_hiprio_queue(
    slow_frontend: VhostUserFrontend,
) -> None:
    fe = slow_frontend
    fe.start()
    fe.request(fr.init_request(2))
    started = time.monotonic()
    getattr_head = fe.queues[1].add_request(fr.getattr(4, 1), 4096)
    fe.kick(1)
    time.sleep(0.2)  # the GETATTR is now inside the plugin's check
    forget = fe.queues[0].add_request([fr.forget(5, 1, 1)], [], indirect=False)
    fe.kick(0)
    assert fe.wait_used(0, timeout=1.5) == [(forget, 0)]
    assert time.monotonic() - started < 1.8, "FORGET waited for the slow GETATTR"
    [(head, _)] = fe.wait_used(1, timeout=10)
    assert head == getattr_head


def test_slow_allowlist_hook_does_not_hold_up_the_vmm(
    slow_frontend: VhostUserFrontend, socket_path: Path
) -> None:
    """Allowlist changes (and their policy hooks) run off the trio thread that answers the
    VMM: QEMU blocks on some replies (GET_VRING_BASE at VM stop), so they must not wait."""
    with AllowlistClient(str(socket_path.with_name("ctl.sock"))) as client:
        adder = threading.Thread(target=client.add, args=(["/x"],))
        adder.start()
        time.sleep(0.2)  # the change is now inside the plugin's check
        started = time.monotonic()
        assert slow_frontend.get_u64(R.GET_QUEUE_NUM) == NUM_QUEUES
        assert time.monotonic() - started < 1.0, "the VMM waited for the allowlist hook"
        adder.join()
