"""A guest boots with fsd as its root filesystem (issue 3 item 4).

The initramfs only loads the virtio-fs modules, mounts the tag and switch_roots; from then on
every exec, library-free busybox applet and file the guest touches comes through fsd. The
tree's busybox init runs the workload (cwd /root), powers off through its shutdown script
(sync, remount / read-only) and QEMU exits; the host then finds the guest's files in the tree
and fsd exits 0 on its own once QEMU has disconnected.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from fsd.testing.guest import (
    GuestError,
    GuestImage,
    build_rootfs,
    fsd_env,
    run_guest_rootfs,
    running_backend,
)

from .conftest import backend_command

pytestmark = pytest.mark.guest

TAG = "fsdroot"

WORKLOAD = r"""
set -e
md5() { md5sum "$1" | cut -d' ' -f1; }
echo "pwd=$(pwd)"
echo "root_mount=$(awk '$2 == "/" { print $1, $3, $4 }' /proc/mounts | cut -d, -f1)"
echo "hostname=$(hostname)"
echo "whoami=$(whoami)"

# /root: create, write, append, rename, delete, directories, links.
echo "hello from the guest" > greeting.txt
echo "second line" >> greeting.txt
dd if=/dev/urandom of=random.bin bs=4k count=300 2>/dev/null
echo "random_md5=$(md5 random.bin)"
seq 1 20000 > numbers.txt
mkdir -p dir/sub
echo moved > dir/sub/before.txt
mv dir/sub/before.txt dir/after.txt
test ! -e dir/sub/before.txt
echo doomed > doomed.txt
rm doomed.txt
test ! -e doomed.txt
mkdir gone && rmdir gone
ln -s greeting.txt link-to-greeting
ln greeting.txt hardlink.txt
echo "link_target=$(readlink link-to-greeting)"
echo "nlink=$(stat -c %h greeting.txt)"
chmod 0640 greeting.txt
echo "mode=$(stat -c %a greeting.txt)"
echo "listing=$(ls | tr '\n' ,)"

# /tmp lives on the root filesystem too (no tmpfs): a copied binary runs from it.
cp /bin/busybox /tmp/busybox.copy
echo "exec_from_tmp=$(/tmp/busybox.copy echo ran)"
echo scratch > /tmp/scratch.txt
mv /tmp/scratch.txt /tmp/kept.txt
echo "tmp_kept=$(cat /tmp/kept.txt)"
rm /tmp/busybox.copy

# Host files the guest reads, and its own files read back after dropping the page cache.
echo "host_file=$(cat /etc/fsd/from-host.txt)"
sync
echo 3 > /proc/sys/vm/drop_caches
echo "random_md5_again=$(md5 random.bin)"
echo "numbers_tail=$(tail -n 1 numbers.txt)"
df -P / | tail -n 1 | awk '{ print "df_blocks=" $2 }'
"""


def key_values(output: str) -> dict[str, str]:
    """The workload's ``key=value`` lines."""
    pairs = (line.split("=", 1) for line in output.splitlines())
    return {pair[0]: pair[1] for pair in pairs if len(pair) == 2}


def marker_value(console: str, name: str) -> str | None:
    """The rest of the first ``@@FSD NAME ...`` line, or None."""
    found = re.search(rf"@@FSD {name}(?: (.*))?$", console, re.MULTILINE)
    return None if found is None else (found.group(1) or "")


async def test_boot_with_fsd_as_root(
    guest_image: GuestImage,
    tmp_path: Path,
    socket_dir: Path,
    record_property: Callable[[str, object], None],
) -> None:
    tree = build_rootfs(tmp_path / "root", workload=WORKLOAD)
    (tree / "etc" / "fsd" / "from-host.txt").write_text("written on the host\n")
    socket_path = socket_dir / "fs.sock"
    log_path = tmp_path / "fsd.log"
    # The tag is QEMU's (-device ...,tag=): fsd needs --tag only for crosvm front-ends.
    argv = backend_command(socket_path, tree)
    async with running_backend(argv, socket_path, log_path=log_path, env=fsd_env()) as backend:
        result = await run_guest_rootfs(
            socket_path=socket_path, tag=TAG, guest_image=guest_image, time_limit=60.0
        )
        # The backend serves one VMM: it exits on its own once QEMU has gone away.
        with trio.move_on_after(10):
            await backend.process.wait()
        fsd_status = backend.process.returncode
    report = f"{result.describe()}\n--- fsd log ---\n{backend.log()}"
    if result.exit_status != 0:
        raise GuestError(report)
    assert fsd_status == 0, f"backend exited with {fsd_status}\n{report}"

    values = key_values(result.output)
    assert values["pwd"] == "/root"
    assert values["root_mount"] == f"{TAG} virtiofs rw", report
    assert values["hostname"] == "fsd-root"
    assert values["whoami"] == "root"
    assert values["link_target"] == "greeting.txt"
    assert values["nlink"] == "2"
    assert values["mode"] == "640"
    assert values["exec_from_tmp"] == "ran"
    assert values["tmp_kept"] == "scratch"
    assert values["host_file"] == "written on the host"
    assert values["random_md5"] == values["random_md5_again"]
    assert values["numbers_tail"] == "20000"
    assert int(values["df_blocks"]) > 0

    # The guest shut down cleanly: / went read-only in its shutdown script.
    root_ro = marker_value(result.console, "ROOT-RO")
    assert root_ro is not None and root_ro.split()[0] == "virtiofs", report
    assert root_ro.split()[1].split(",")[0] == "ro", report
    assert marker_value(result.console, "DONE") is not None, report

    # What the guest wrote is in the host tree.
    home = tree / "root"
    greeting = home / "greeting.txt"
    assert greeting.read_text() == "hello from the guest\nsecond line\n"
    assert greeting.stat().st_mode & 0o777 == 0o640
    assert greeting.stat().st_nlink == 2
    assert (home / "hardlink.txt").samefile(greeting)
    assert (home / "link-to-greeting").readlink() == Path("greeting.txt")
    random_bin = (home / "random.bin").read_bytes()
    assert len(random_bin) == 300 * 4096
    assert hashlib.md5(random_bin).hexdigest() == values["random_md5"]
    expected_numbers = "".join(f"{n}\n" for n in range(1, 20001))
    assert (home / "numbers.txt").read_text() == expected_numbers
    assert (home / "dir" / "after.txt").read_text() == "moved\n"
    assert list((home / "dir" / "sub").iterdir()) == []
    assert not (home / "doomed.txt").exists()
    assert not (home / "gone").exists()
    assert (tree / "tmp" / "kept.txt").read_text() == "scratch\n"
    assert not (tree / "tmp" / "busybox.copy").exists()
    assert not (tree / "tmp" / "scratch.txt").exists()

    mounted = result.guest_uptime_at_mount
    init = marker_value(result.console, "INIT")
    record_property("boot_to_root_mounted_s", result.boot_to_mount_seconds)
    record_property("guest_uptime_root_mounted_s", mounted)
    record_property("guest_uptime_init_s", init)
    record_property("guest_uptime_done_s", marker_value(result.console, "DONE"))
    record_property("total_s", round(result.total_seconds, 2))
