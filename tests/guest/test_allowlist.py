"""The dynamic path allowlist, as a guest sees it while the host changes it mid-run.

The guest pauses at each ``host_step``; the host changes the allowlist with the operator's
client (``python -m fsd allowlist``) and the guest checks what it sees next. drop_caches makes
the guest forget dentries it cached before a revocation (it would otherwise trust them until
the entry timeout, with any backend); with ``--cfg timeout=0`` the guest caches nothing and
sees the revocation at once, without it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from fsd.testing.guest import (
    Backend,
    GuestImage,
    fsd_env,
    fsd_serve_command,
    run_guest,
    running_backend,
)

pytestmark = pytest.mark.guest

WORKLOAD = r"""
expect() {  # expect visible|hidden PATH
    if [ -e "$2" ]; then seen=visible; else seen=hidden; fi
    echo "$3$2=$seen"
}
expect hidden public/hello.txt start:
expect hidden secret/plans.txt start:
test -z "$(ls -A)" && echo "start:listing=empty"
host_step allow /public /inbox
expect visible public/hello.txt allowed:
expect hidden secret/plans.txt allowed:
echo "allowed:listing=$(ls | tr '\n' ,)"
echo "allowed:read=$(cat public/hello.txt)"
echo from-guest > inbox/note.txt && echo "allowed:write=ok"
if echo nope > secret/new.txt 2>/dev/null; then echo "allowed:secret-write=ok"; fi
host_step revoke /public
[ "$FORGET" = drop_caches ] && echo 2 > /proc/sys/vm/drop_caches
expect hidden public/hello.txt revoked:
expect visible inbox/note.txt revoked:
"""


@pytest.fixture(params=["drop_caches", "timeout=0"])
async def allowlist_backend(
    request: pytest.FixtureRequest,
    guest_image: GuestImage,
    socket_dir: Path,
    shared_dir: Path,
    tmp_path: Path,
) -> AsyncIterator[tuple[Backend, Path, str]]:
    """fsd serve with an (empty) allowlist and its control socket."""
    if os.environ.get("FSD_GUEST_BACKEND", "fsd") != "fsd":
        pytest.skip("only fsd has a dynamic path allowlist")
    socket_path = socket_dir / "fs.sock"
    control = socket_dir / "allowlist.sock"
    forget: str = request.param
    extra = ["--cfg", "timeout=0"] if forget == "timeout=0" else []
    argv = fsd_serve_command(
        socket_path, shared_dir, "--allowlist-socket-path", str(control), *extra
    )
    log_path = tmp_path / "backend.log"
    async with running_backend(argv, socket_path, log_path=log_path, env=fsd_env()) as backend:
        yield backend, control, forget


async def test_guest_sees_allowlist_changes(
    allowlist_backend: tuple[Backend, Path, str], shared_dir: Path
) -> None:
    backend, control, forget = allowlist_backend
    for name, text in [("public/hello.txt", "hello"), ("secret/plans.txt", "secret")]:
        (shared_dir / name).parent.mkdir()
        (shared_dir / name).write_text(text + "\n")
    (shared_dir / "inbox").mkdir()

    async def on_step(name: str, paths: list[str]) -> str:
        verb = {"allow": "add", "revoke": "remove"}[name]
        argv = [sys.executable, "-m", "fsd", "allowlist", "--socket", str(control), verb, *paths]
        done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, env=fsd_env())
        assert isinstance(done, subprocess.CompletedProcess)
        return "ok"

    result = await run_guest(
        f"FORGET={forget}\n{WORKLOAD}",
        socket_path=backend.socket_path,
        on_step=on_step,
        time_limit=120,
    )
    result.check()
    seen = dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line)
    assert seen == {
        "start:public/hello.txt": "hidden",
        "start:secret/plans.txt": "hidden",
        "start:listing": "empty",
        "allowed:public/hello.txt": "visible",
        "allowed:secret/plans.txt": "hidden",
        "allowed:listing": "inbox,public,",
        "allowed:read": "hello",
        "allowed:write": "ok",
        "revoked:public/hello.txt": "hidden",
        "revoked:inbox/note.txt": "visible",
    }, backend.log()
    assert (shared_dir / "inbox" / "note.txt").read_text() == "from-guest\n"
    assert not (shared_dir / "secret" / "new.txt").exists()
