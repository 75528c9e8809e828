"""A real guest against ``fsd serve`` in its default sandbox: namespaces, seccomp ``kill``.

The workload touches every kind of operation (data, metadata, xattrs, links, special files,
locks, a large write); a syscall missing from the allowlist would kill the daemon and fail
the boot. Midway, the host looks at the running server through /proc: its root holds the
share and nothing of the host, its capabilities are the file server's, NoNewPrivs and seccomp
are on. Symlinks planted by the host that point at / and /etc come back to the guest as the
symlinks they are; fsd follows none of them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from fsd.sandbox import FILE_SERVER_CAPABILITIES
from fsd.sandbox.capabilities import capability_mask
from fsd.testing.guest import GuestImage, fsd_env, run_guest, running_backend

pytestmark = pytest.mark.guest

WORKLOAD = r"""
set -e
echo data > a.txt
dd if=/dev/urandom of=big.bin bs=1M count=8 2>/dev/null
cat big.bin > /dev/null
mkdir -p d/e
mv a.txt d/e/b.txt
ln d/e/b.txt hard.txt
ln -s d/e/b.txt soft
chmod 600 hard.txt
chown 1000:1000 soft 2>/dev/null || chown -h 1000:1000 soft
truncate -s 100 big.bin
mkfifo fifo
fsdprobe setxattr hard.txt user.k v > /dev/null
fsdprobe getxattr hard.txt user.k > /dev/null
fsdprobe flock hard.txt ex nb > /dev/null
fsdprobe setlk hard.txt w 0 10 > /dev/null
stat -f . > /dev/null
ls -la . d d/e > /dev/null
echo "abs_etc=$(readlink link_abs_etc)"
echo "rel_etc=$(readlink link_rel_etc)"
echo "inside=$(cat inside.txt)"
echo "status=$(host_step inspect)"
rm -r d hard.txt soft fifo big.bin
echo done
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the namespace sandbox of a root daemon")
async def test_guest_workload_in_the_sandbox(
    guest_image: GuestImage, socket_dir: Path, shared_dir: Path, tmp_path: Path
) -> None:
    (shared_dir / "inside.txt").write_text("shared\n")
    os.symlink("/etc", shared_dir / "link_abs_etc")
    os.symlink("../" * len(shared_dir.parts) + "etc", shared_dir / "link_rel_etc")
    socket_path = socket_dir / "fs.sock"
    # fsd serve as a VMM starts it: the namespace sandbox and seccomp kill are its defaults.
    argv = [sys.executable, "-m", "fsd", "serve", "--socket-path", str(socket_path),
            "--shared-dir", str(shared_dir)]  # fmt: skip
    seen: dict[str, str] = {}

    async with running_backend(
        argv, socket_path, log_path=tmp_path / "backend.log", env=fsd_env()
    ) as backend:

        async def on_step(name: str, args: list[str]) -> str:
            seen.update(_inspect(_only_child(backend.process.pid)))  # /proc: never blocks
            return "inspected"

        result = await run_guest(
            WORKLOAD, socket_path=socket_path, guest_image=guest_image, on_step=on_step,
            time_limit=180,
        )  # fmt: skip
        log = backend.log()
    assert result.exit_status == 0, f"{result.describe()}\n--- backend log ---\n{log}"
    values = dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line)
    assert values["abs_etc"] == "/etc"
    assert values["rel_etc"].endswith("../etc")
    assert values["inside"] == "shared"
    assert values["status"] == "inspected"
    assert "sandbox: namespace" in log
    mask = capability_mask(FILE_SERVER_CAPABILITIES)
    for key in ("CapEff", "CapPrm", "CapBnd"):
        assert int(seen[key].strip(), 16) == mask, (key, seen[key])
    assert seen["NoNewPrivs"].strip() == "1"
    assert seen["Seccomp"].strip() == "2"
    assert seen["etc"] == "False"
    assert "etc" not in seen["root"].split()


def _inspect(server: int) -> dict[str, str]:
    """The running server as the host sees it: /proc/<pid>/status, and its root."""
    status = Path(f"/proc/{server}/status").read_text()
    seen = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    seen["root"] = " ".join(sorted(os.listdir(f"/proc/{server}/root")))
    seen["etc"] = str(os.path.exists(f"/proc/{server}/root/etc"))
    return seen


def _only_child(pid: int) -> int:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])
