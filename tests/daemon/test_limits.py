"""The open-files limit fsd raises at start-up (one fd per inode the guest knows)."""

from __future__ import annotations

import resource
import subprocess
import sys


def test_soft_limit_is_raised_to_the_hard_limit() -> None:
    # In a child, so the test process keeps its own limits.
    code = (
        "import resource\n"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "from fsd.daemon.limits import raise_open_files_limit\n"
        "print(raise_open_files_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    returned, soft = map(int, out.stdout.split())
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert returned == soft
    assert soft == hard or (hard == resource.RLIM_INFINITY and soft >= 1 << 20)
