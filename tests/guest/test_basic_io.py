"""A real guest kernel mounts the share with ``-t virtiofs`` and does everyday file work.

One boot covers it all (each boot costs seconds under TCG): create, write 1 MiB and 64 MiB,
read a host file, list, rename, truncate, delete, mkdir/rmdir, statfs, and a host step in
the middle that checks the guest's writes from the host while the guest is still running.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from fsd.testing.guest import GuestRunner

pytestmark = pytest.mark.guest

MiB = 1 << 20
FUSE_SUPER_MAGIC = 0x65735546

WORKLOAD = r"""
set -e
md5() { md5sum "$1" | cut -d' ' -f1; }

echo "host_md5=$(md5 from-host.bin)"
mkdir -p work/sub/deeper work/gone
echo hello > work/a.txt
: > work/empty
dd if=/dev/urandom of=work/one.bin bs=1M count=1 2>/dev/null
dd if=/dev/urandom of=work/big.bin bs=1M count=64 2>/dev/null
echo "one_md5=$(md5 work/one.bin)"
echo "big_md5=$(md5 work/big.bin)"
echo "big_size=$(stat -c %s work/big.bin)"

mv work/a.txt work/renamed.txt
test ! -e work/a.txt
echo "renamed=$(cat work/renamed.txt)"

cp work/one.bin work/short.bin
truncate -s 4096 work/short.bin
cp work/one.bin work/long.bin
truncate -s 2097152 work/long.bin
echo "short_size=$(stat -c %s work/short.bin)"
echo "long_size=$(stat -c %s work/long.bin)"

rm work/empty
test ! -e work/empty
rmdir work/sub/deeper work/gone
mkdir work/sub/kept
if rmdir work/sub 2>/dev/null; then echo "rmdir of a non-empty directory worked"; exit 1; fi
echo "listing=$(ls work | tr '\n' ,)"

stat -f -c 'statfs_type=%t statfs_frsize=%S statfs_blocks=%b statfs_namelen=%l' . | tr ' ' '\n'

reply=$(host_step check-from-host)
echo "reply=$reply"
echo "late=$(cat late-from-host.txt)"
"""


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def key_values(output: str) -> dict[str, str]:
    """The workload's ``key=value`` lines."""
    pairs = (line.split("=", 1) for line in output.splitlines())
    return {pair[0]: pair[1] for pair in pairs if len(pair) == 2}


async def test_everyday_file_work(
    run_in_guest: GuestRunner, shared_dir: Path, record_property: Callable[[str, object], None]
) -> None:
    host_file = shared_dir / "from-host.bin"
    host_file.write_bytes(os.urandom(5 * MiB + 123))
    seen_mid_run: dict[str, bool] = {}

    async def on_step(name: str, args: list[str]) -> str:
        assert name == "check-from-host"
        work = shared_dir / "work"
        seen_mid_run["renamed"] = (work / "renamed.txt").read_text() == "hello\n"
        seen_mid_run["big"] = (work / "big.bin").stat().st_size == 64 * MiB
        (shared_dir / "late-from-host.txt").write_text("written by the host mid-run\n")
        return "host checked"

    result = await run_in_guest(WORKLOAD, on_step=on_step)
    record_property("boot_to_mount_seconds", result.boot_to_mount_seconds)
    record_property("guest_total_seconds", result.total_seconds)
    print(f"boot to mount {result.boot_to_mount_seconds:.2f} s, run {result.total_seconds:.2f} s")

    got = key_values(result.output)
    work = shared_dir / "work"
    assert got["host_md5"] == md5(host_file)
    assert got["one_md5"] == md5(work / "one.bin")
    assert got["big_md5"] == md5(work / "big.bin")
    assert got["big_size"] == str(64 * MiB) == str((work / "big.bin").stat().st_size)
    assert got["renamed"] == "hello"
    assert not (work / "a.txt").exists()
    assert (work / "renamed.txt").read_text() == "hello\n"

    one = (work / "one.bin").read_bytes()
    assert (got["short_size"], got["long_size"]) == ("4096", str(2 * MiB))
    assert (work / "short.bin").read_bytes() == one[:4096]
    assert (work / "long.bin").read_bytes() == one + bytes(MiB)

    listing = got["listing"].rstrip(",").split(",")
    assert sorted(p.name for p in work.iterdir()) == sorted(listing)
    assert sorted(listing) == [
        "big.bin", "long.bin", "one.bin", "renamed.txt", "short.bin", "sub",
    ]  # fmt: skip
    assert [p.name for p in (work / "sub").iterdir()] == ["kept"]

    host_fs = os.statvfs(shared_dir)
    assert int(got["statfs_type"], 16) == FUSE_SUPER_MAGIC
    assert int(got["statfs_namelen"]) == host_fs.f_namemax
    guest_bytes = int(got["statfs_blocks"]) * int(got["statfs_frsize"])
    assert guest_bytes == host_fs.f_blocks * host_fs.f_frsize

    assert seen_mid_run == {"renamed": True, "big": True}
    assert got["reply"] == "host checked"
    assert got["late"] == "written by the host mid-run"
