"""``fsd serve --readonly`` with a real guest: every change the guest tries fails with EROFS
("Read-only file system"), reading works, and the host directory is exactly as before."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fsd.testing.guest import Backend, FsdServing, run_guest

pytestmark = pytest.mark.guest

WORKLOAD = r"""
try() {  # try LABEL CMD...: LABEL=ok, or LABEL= and the error message
    label=$1; shift
    if out=$("$@" 2>&1); then echo "$label=ok"; else echo "$label=${out##*: }"; fi
}
p() { label=$1; shift; echo "$label=$(fsdprobe "$@")"; }
echo "read=$(cat file)"
echo "list=$(ls | tr '\n' ' ')"
p getxattr getxattr file user.k
try create sh -c 'echo x > new'
try overwrite sh -c 'echo x > file'
try append sh -c 'echo x >> file'
try truncate truncate -s 0 file
try mkdir mkdir newdir
try rmdir rmdir dir
try rm rm file
try mv mv file moved
try symlink ln -s file sl
try link ln file hard
try chmod chmod 600 file
try chown chown 1:1 file
try touch touch file
try mknod mkfifo fifo
p setxattr setxattr file user.new v
p removexattr removexattr file user.k
p tmpfile tmpfile . t content
p rename2 rename2 file dir/x noreplace
"""


@pytest.fixture
async def readonly_backend(fsd_serving: FsdServing) -> AsyncIterator[Backend]:
    async with fsd_serving("--readonly") as backend:
        yield backend


def _snapshot(root: Path) -> dict[str, tuple[int, int, int, bytes]]:
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
        out[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, data)
    return out


async def test_the_guest_cannot_change_a_readonly_share(
    readonly_backend: Backend, shared_dir: Path
) -> None:
    (shared_dir / "file").write_text("content")
    os.setxattr(shared_dir / "file", "user.k", b"v")
    (shared_dir / "dir").mkdir()
    before = _snapshot(shared_dir)
    result = await run_guest(WORKLOAD, socket_path=readonly_backend.socket_path, time_limit=180)
    assert result.exit_status == 0, f"{result.describe()}\n{readonly_backend.log()}"
    got = dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line)
    erofs = "Read-only file system"
    assert got.pop("read") == "content"
    assert got.pop("list") == "dir file "
    assert got.pop("getxattr").endswith("value=v")
    for probe in ("setxattr", "removexattr", "tmpfile", "rename2"):
        assert got.pop(probe).startswith("err=EROFS"), probe
    assert got == dict.fromkeys(
        [
            "create", "overwrite", "append", "truncate", "mkdir", "rmdir", "rm", "mv",
            "symlink", "link", "chmod", "chown", "touch", "mknod",
        ],
        erofs,
    )  # fmt: skip
    assert _snapshot(shared_dir) == before
    assert os.getxattr(shared_dir / "file", "user.k") == b"v"
