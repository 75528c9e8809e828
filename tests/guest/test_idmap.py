"""``fsd serve --uid-map/--gid-map`` with a real guest: guest 1000 is host 2000.

The guest's ``user`` (1000:1000) creates files that are 2000:2000 on the host and 1000:1000 in
the guest; a host file owned by 2000 is the user's in the guest (so its mode bits apply to it),
one owned by 3000 shows as 65534; guest root may chown to mapped ids only (EINVAL otherwise).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fsd.testing.guest import (
    Backend,
    GuestImage,
    fsd_env,
    fsd_serve_command,
    run_guest,
    running_backend,
)

pytestmark = pytest.mark.guest

MAP = "0 0 1,1000 2000 1"

WORKLOAD = r"""
try() {  # try LABEL CMD...: LABEL=ok or LABEL=denied
    label=$1; shift
    if "$@" 2>/dev/null; then echo "$label=ok"; else echo "$label=denied"; fi
}
try create as_user sh -c 'echo from-user > open/user.txt'
try mkdir as_user mkdir open/userdir
echo "user_owner=$(stat -c %u:%g open/user.txt)"
echo "dir_owner=$(stat -c %u:%g open/userdir)"
echo "host2000=$(stat -c %u:%g host2000)"
echo "host3000=$(stat -c %u:%g host3000)"
try read-own as_user cat host2000
try read-other as_user cat host3000
echo root > open/root.txt
echo "root_owner=$(stat -c %u:%g open/root.txt)"
try chown-mapped chown 1000:1000 open/root.txt
echo "chowned_owner=$(stat -c %u:%g open/root.txt)"
try chown-unmapped chown 3000 open/root.txt
"""


@pytest.fixture
async def idmap_backend(
    guest_image: GuestImage, socket_dir: Path, shared_dir: Path, tmp_path: Path
) -> AsyncIterator[Backend]:
    if os.environ.get("FSD_GUEST_BACKEND", "fsd") != "fsd":
        pytest.skip("fsd's --uid-map/--gid-map (virtiofsd spells them --translate-uid/gid)")
    socket_path = socket_dir / "fs.sock"
    argv = fsd_serve_command(socket_path, shared_dir, "--uid-map", MAP, "--gid-map", MAP)
    log_path = tmp_path / "backend.log"
    async with running_backend(argv, socket_path, log_path=log_path, env=fsd_env()) as backend:
        yield backend


async def test_guest_ids_are_translated(idmap_backend: Backend, shared_dir: Path) -> None:
    os.chmod(shared_dir, 0o755)
    (shared_dir / "open").mkdir()
    os.chmod(shared_dir / "open", 0o777)
    for name, owner in (("host2000", 2000), ("host3000", 3000)):
        (shared_dir / name).write_text(f"owned by {owner}\n")
        os.chown(shared_dir / name, owner, owner)
        os.chmod(shared_dir / name, 0o600)

    result = await run_guest(WORKLOAD, socket_path=idmap_backend.socket_path, time_limit=180)
    assert result.exit_status == 0, f"{result.describe()}\n{idmap_backend.log()}"
    got = dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line)
    assert got == {
        "create": "ok",
        "mkdir": "ok",
        "user_owner": "1000:1000",
        "dir_owner": "1000:1000",
        "host2000": "1000:1000",
        "host3000": "65534:65534",
        "read-own": "ok",
        "read-other": "denied",
        "root_owner": "0:0",
        "chown-mapped": "ok",
        "chowned_owner": "1000:1000",
        "chown-unmapped": "denied",
    }, result.output
    for name in ("user.txt", "userdir", "root.txt"):
        st = os.lstat(shared_dir / "open" / name)
        assert (st.st_uid, st.st_gid) == (2000, 2000), name
    assert (shared_dir / "open" / "user.txt").read_text() == "from-user\n"
