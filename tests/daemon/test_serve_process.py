"""``fsd serve`` sets up its process before serving (:mod:`fsd.cli.process`), seen from outside:
a real daemon started with umask 022 and supplementary groups, driven by the scripted
front-end."""

from __future__ import annotations

import os
import resource
import signal
import stat
from pathlib import Path

from fsd.testing import fuse_requests as fr
from fsd.testing.frontend import VhostUserFrontend
from fsd.testing.serve import ServeProcess

ROOT = 1


def _status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    raise KeyError(name)


def test_the_daemon_applies_no_umask_and_holds_no_groups(
    shared_dir: Path, socket_path: Path
) -> None:
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Below the hard limit (which the daemon raises it to), yet room for this test process.
    lowered = 1 << 16 if limit[1] == resource.RLIM_INFINITY else limit[1] // 2
    old_umask = os.umask(0o022)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, limit[1]))  # inherited by the daemon
    try:
        daemon = ServeProcess(shared_dir, socket_path)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, limit)
        os.umask(old_umask)
    try:
        if os.geteuid() == 0:
            assert _status_field(daemon.server_pid, "Groups") == ""  # CVE-2022-0358
        limits = Path(f"/proc/{daemon.server_pid}/limits").read_text()
        soft = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert soft.split()[3] != str(lowered)
        frontend = VhostUserFrontend(str(socket_path))
        try:
            frontend.start()
            assert fr.parse_reply(frontend.request(fr.init_request(1))).error == 0
            # The guest kernel already applied its caller's umask: these modes are final.
            assert fr.parse_reply(frontend.request(fr.mkdir(2, ROOT, "d", 0o777))).error == 0
            created = frontend.request(fr.create(3, ROOT, "f", mode=stat.S_IFREG | 0o666))
            assert fr.parse_reply(created).error == 0
        finally:
            frontend.close()
    finally:
        daemon.stop(signal.SIGTERM)
    assert stat.S_IMODE((shared_dir / "d").stat().st_mode) == 0o777
    assert stat.S_IMODE((shared_dir / "f").stat().st_mode) == 0o666
