"""A guest user's files belong to that user on the host, and the host denies what it may not do.

The guest's ``user`` (uid 1000, gid 1000, also in group ``extra`` 1001) works through
``as_user``; fsd creates with the caller's fsuid/fsgid, so the host kernel sets ownership and
checks permissions itself (docs/credentials.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fsd.testing.guest import GuestRunner

pytestmark = pytest.mark.guest

WORKLOAD = r"""
try() {  # try LABEL CMD...: LABEL=ok or LABEL=denied
    label=$1; shift
    if "$@" 2>/dev/null; then echo "$label=ok"; else echo "$label=denied"; fi
}
try create as_user sh -c 'echo from-user > open/user.txt'
try mkdir as_user mkdir open/userdir
try symlink as_user ln -s user.txt open/userlink
try rootonly-create as_user sh -c 'echo x > rootonly/nope.txt'
try rootonly-mkdir as_user mkdir rootonly/nope
try rootonly-append as_user sh -c 'echo x >> rootonly/existing'
try group-create as_user sh -c 'echo x > groupdir/by-group.txt'
echo "user_owner=$(stat -c %u:%g open/user.txt)"
echo "dir_owner=$(stat -c %u:%g open/userdir)"
echo root > open/root.txt
echo "root_owner=$(stat -c %u:%g open/root.txt)"
"""


async def test_guest_user_owns_its_files(run_in_guest: GuestRunner, shared_dir: Path) -> None:
    os.chmod(shared_dir, 0o755)
    (shared_dir / "open").mkdir()
    os.chmod(shared_dir / "open", 0o777)
    (shared_dir / "rootonly").mkdir()
    os.chmod(shared_dir / "rootonly", 0o755)
    (shared_dir / "rootonly" / "existing").write_text("root's\n")
    os.chmod(shared_dir / "rootonly" / "existing", 0o644)
    (shared_dir / "groupdir").mkdir()
    os.chown(shared_dir / "groupdir", 0, 1001)
    os.chmod(shared_dir / "groupdir", 0o770)

    result = await run_in_guest(WORKLOAD)
    got = dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line)
    assert got == {
        "create": "ok",
        "mkdir": "ok",
        "symlink": "ok",
        "rootonly-create": "denied",
        "rootonly-mkdir": "denied",
        "rootonly-append": "denied",
        # The guest's 6.1 kernel sends one gid and no supplementary group (CREATE_SUPP_GROUP
        # came with 6.3): group 1001 does not reach the host, whose check then refuses.
        "group-create": "denied",
        "user_owner": "1000:1000",
        "dir_owner": "1000:1000",
        "root_owner": "0:0",
    }, result.output
    for name in ("user.txt", "userdir", "userlink"):
        st = os.lstat(shared_dir / "open" / name)
        assert (st.st_uid, st.st_gid) == (1000, 1000), name
    assert (shared_dir / "open" / "user.txt").read_text() == "from-user\n"
    assert sorted(os.listdir(shared_dir / "rootonly")) == ["existing"]
    assert (shared_dir / "rootonly" / "existing").read_text() == "root's\n"
    assert os.listdir(shared_dir / "groupdir") == []
