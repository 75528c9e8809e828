"""fsd mount served by several worker threads: cloned /dev/fuse fds, concurrent data
operations on open files, everything else one at a time, and nothing lost or mixed up."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fsd.fs import FsOptions, PassthroughFs
from fsd.fuse import FuseServer
from fsd.sgbuf import Segments
from fsd.testing.mount import devfuse_unavailable, mounted

pytestmark = pytest.mark.devfuse


def test_worker_threads_serve_concurrent_clients(share: Path) -> None:
    reason = devfuse_unavailable()
    if reason is not None:
        pytest.skip(reason)
    fs = PassthroughFs(share, FsOptions(cache="never"))  # every read reaches the server
    server = FuseServer(fs, transport="dev-fuse")
    seen: set[str] = set()

    def handle(request: Segments, reply: Segments) -> int:
        seen.add(threading.current_thread().name)
        return server.handle(request, reply)

    def client(index: int, mnt: Path) -> None:
        path = mnt / f"f{index}"
        data = os.urandom(64 * 1024)
        for round_ in range(20):
            with open(path, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            with open(path, "rb") as f:
                assert f.read() == data, (index, round_)
            os.rename(path, mnt / f"g{index}")
            os.rename(mnt / f"g{index}", path)

    try:
        with mounted(share, handler=handle, threads=4) as mount:
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(client, range(8), [mount.mountpoint] * 8))
            assert sorted(os.listdir(mount.mountpoint)) == sorted(f"f{i}" for i in range(8))
    finally:
        fs.close()
    assert len({n for n in seen if n.startswith("fsd-fuse-")}) >= 2, seen
    assert len(fs.handles) == 0
