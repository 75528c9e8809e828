"""The process-wide set-up the entry points do before ``trio.run``."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest

from fsd.cli.process import prepare_process


def test_soft_limit_is_raised_to_the_hard_limit() -> None:
    # In a child, so the test process keeps its own limits.
    code = (
        "import resource\n"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "from fsd.cli.process import raise_open_files_limit\n"
        "print(raise_open_files_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    returned, soft = map(int, out.stdout.split())
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert returned == soft
    assert soft == hard or (hard == resource.RLIM_INFINITY and soft >= 1 << 20)


def test_prepare_sets_umask_zero_and_restore_puts_it_back() -> None:
    old = os.umask(0o027)
    try:
        state = prepare_process()
        assert os.umask(0) == 0
        state.restore()
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(old)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root has supplementary groups to drop")
def test_root_loses_its_supplementary_groups_until_restored() -> None:
    before = os.getgroups()
    os.setgroups([*before, 4242])
    try:
        state = prepare_process()
        assert os.getgroups() == []
        state.restore()
        assert sorted(os.getgroups()) == sorted([*before, 4242])
    finally:
        os.setgroups(before)


@pytest.mark.parametrize(
    ("limit", "expected"),
    [("4096", (4096, 4096)), ("0", (300, 5000)), (None, (5000, 5000))],
)
def test_rlimit_nofile(limit: str | None, expected: tuple[int, int]) -> None:
    """``--rlimit-nofile N`` sets both limits as virtiofsd does; 0 leaves them; without it
    the soft limit goes up to the hard one."""
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (300, 5000))\n"
        "from fsd.cli.process import prepare_process\n"
        "limit = None if sys.argv[1] == 'None' else int(sys.argv[1])\n"
        "prepare_process(rlimit_nofile=limit)\n"
        "print(*resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(limit)], capture_output=True, text=True, check=True
    )
    assert tuple(map(int, out.stdout.split())) == expected
