"""POSIX ACLs with a real guest kernel: enforced with ``--posix-acl``, unreachable without.

With ``--posix-acl`` the guest's kernel reads the host's ACLs and checks them itself, a new
file gets its parent's default ACL (the caller's umask does not apply) or else the umask, and
guest root sets ACLs that land on the host. Without it, Linux 6.1 still passes the ACL names
through as plain xattrs and checks no permission for them: the daemon must refuse them, or
any guest user could set the ACL, and with it the mode, of a file that is not theirs.
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fsd.testing.guest import Backend, FsdServing, run_guest
from fsd.testing.posix_acl import ACCESS, DEFAULT
from fsd.testing.posix_acl import one_user_acl as acl

pytestmark = pytest.mark.guest

WORKLOAD = r"""
try() {  # try LABEL CMD...: LABEL=ok, or LABEL= and the error message
    label=$1; shift
    if out=$("$@" 2>&1); then echo "$label=ok"; else echo "$label=${out##*: }"; fi
}
p() { label=$1; shift; echo "$label=$(fsdprobe "$@")"; }
try user_reads as_user cat acl/secret
try user_writes as_user sh -c 'echo x >> acl/secret'
(umask 077; echo x > acl/inherit/made; echo x > acl/plain; mkdir acl/inherit/sub)
p root_sets setxattrhex acl/byroot system.posix_acl_access @ACL@
user_acl=$(as_user fsdprobe setxattrhex acl/victim system.posix_acl_access @ACL@)
echo "user_sets_others_as_user=$user_acl"
"""


@pytest.fixture(params=[True, False], ids=["posix-acl", "default"])
async def acl_backend(
    request: pytest.FixtureRequest,
    fsd_serving: FsdServing,
) -> AsyncIterator[tuple[Backend, bool]]:
    async with fsd_serving(*(["--posix-acl"] if request.param else [])) as backend:
        yield backend, request.param


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_acls_are_enforced_with_posix_acl_and_unreachable_without(
    acl_backend: tuple[Backend, bool], shared_dir: Path
) -> None:
    backend, acls_on = acl_backend
    os.chmod(shared_dir, 0o755)
    share = shared_dir / "acl"
    share.mkdir(mode=0o777)
    os.chmod(share, 0o777)
    secret = share / "secret"
    secret.write_text("for uid 1000 by ACL\n")
    os.chmod(secret, 0o600)
    os.setxattr(secret, ACCESS, acl(6, 4, 0, 4, 0))  # user:1000:r-- on a 0600 root file
    (share / "inherit").mkdir()
    os.setxattr(share / "inherit", DEFAULT, acl(7, 7, 5, 7, 5))
    for name in ("byroot", "victim"):
        (share / name).write_text("root's\n")
        os.chmod(share / name, 0o600)
    granted = acl(6, 6, 0, 6, 0)

    workload = WORKLOAD.replace("@ACL@", granted.hex())
    result = await run_guest(workload, socket_path=backend.socket_path, time_limit=180)
    assert result.exit_status == 0, f"{result.describe()}\n{backend.log()}"
    got = dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line)

    # Nobody but guest root may change another user's ACL, whatever the option.
    assert got["user_sets_others_as_user"].startswith("err="), got
    assert ACCESS not in os.listxattr(share / "victim")
    assert _mode(share / "victim") == 0o600
    if acls_on:
        assert got["user_reads"] == "ok"  # the guest enforced the host's ACL
        assert got["user_writes"] == "Permission denied"
        made = share / "inherit" / "made"
        # The parent's default ACL, masked by the create mode 0666; the umask 077 ignored.
        assert os.getxattr(made, ACCESS) == acl(6, 7, 5, 6, 4)
        assert _mode(made) == 0o664
        assert os.getxattr(share / "inherit" / "sub", DEFAULT) == acl(7, 7, 5, 7, 5)
        assert _mode(share / "plain") == 0o600  # no default ACL: the umask applies
        assert got["root_sets"] == "ok=1"
        assert os.getxattr(share / "byroot", ACCESS) == granted
        assert _mode(share / "byroot") == 0o660
    else:
        assert got["user_reads"] == "Permission denied"  # mode bits only: 0640 to "other"
        assert got["root_sets"] == "err=EOPNOTSUPP call=setxattr"
        assert ACCESS not in os.listxattr(share / "byroot")
        assert _mode(share / "plain") == 0o600
