"""A slow plugin holds up its own queue only: the hiprio queue keeps being served."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsd.testing import fuse_requests as fr
from fsd.testing.frontend import VhostUserFrontend
from fsd.testing.serve import ServeProcess


@pytest.fixture
def slow_frontend(shared_dir: Path, socket_path: Path) -> Iterator[VhostUserFrontend]:
    serve = ServeProcess(shared_dir, socket_path, "--plugin", "tests.daemon.slow_plugin:plugin")
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
