"""Every opcode a busybox guest can cause, in one boot, with the effects checked on the host.

busybox has no xattr, lock, renameat2, O_TMPFILE, SEEK_HOLE or copy_file_range tools: those
opcodes are driven by the test bed's ``fsdprobe`` in ``test_fs_features.py``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fsd.testing.guest import GuestRunner

pytestmark = pytest.mark.guest

WORKLOAD = r"""
set -e
cd ops
mkdir d                                   # MKDIR
echo data > d/f                           # CREATE, WRITE, FLUSH, RELEASE
cat d/f > /dev/null                       # OPEN, READ
ln -s f d/sym                             # SYMLINK
echo "readlink=$(readlink d/sym)"         # READLINK
echo "via_link=$(cat d/sym)"
ln d/f d/hard                             # LINK
echo "nlink=$(stat -c %h d/f)"
mkfifo d/fifo                             # MKNOD (fifo)
if mknod d/dev c 1 3 2>/dev/null; then echo "devnode=made"; else echo "devnode=refused"; fi
rm d/dev                                  # UNLINK of a device node
chmod 640 d/f                             # SETATTR mode
touch -d '2001-02-03 04:05:06' d/f        # SETATTR times
truncate -s 100 d/f                       # SETATTR size
fallocate -o 0 -l 8192 d/alloc            # FALLOCATE (busybox opens with O_CREAT)
dd if=/dev/zero of=d/synced bs=4096 count=2 conv=fsync status=none   # FSYNC
mv d/hard d/moved                         # RENAME
echo "listing=$(ls d | tr '\n' ,)"        # OPENDIR, READDIR(PLUS), RELEASEDIR
ls -l d > /dev/null                       # GETATTR / LOOKUP
stat -f -c 'statfs=%t' .                  # STATFS
test -w d/f && echo "access=ok"           # ACCESS (busybox test uses access(2))
sync                                      # SYNCFS
rm d/moved                                # UNLINK
mkdir d/empty && rmdir d/empty            # RMDIR
echo "host=$(cat host.txt)"
"""


def _values(output: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in output.splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


async def test_every_busybox_reachable_opcode(run_in_guest: GuestRunner, shared_dir: Path) -> None:
    ops = shared_dir / "ops"
    ops.mkdir()
    (ops / "host.txt").write_text("from the host\n")
    result = await run_in_guest(WORKLOAD)
    got = _values(result.output)
    d = ops / "d"
    assert got["readlink"] == "f"
    assert got["via_link"] == "data"
    assert got["nlink"] == "2"
    assert got["devnode"] == ("made" if os.geteuid() == 0 else "refused")  # test_device_nodes.py
    assert not (d / "dev").exists()
    assert got["access"] == "ok"
    assert got["statfs"] == "65735546"
    assert got["host"] == "from the host"
    assert got["listing"].rstrip(",").split(",") == sorted(
        ["alloc", "f", "fifo", "moved", "sym", "synced"]
    )

    st = (d / "f").stat()
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_size == 100
    assert (d / "f").read_bytes() == b"data\n" + bytes(95)
    assert st.st_nlink == 1  # the hard link was renamed, then removed
    assert os.readlink(d / "sym") == "f"
    assert stat.S_ISFIFO((d / "fifo").lstat().st_mode)
    assert (d / "alloc").stat().st_size == 8192
    assert (d / "synced").read_bytes() == bytes(8192)
    assert not (d / "empty").exists()
    assert sorted(p.name for p in d.iterdir()) == ["alloc", "f", "fifo", "sym", "synced"]
    # touch -d set both times (guest time zone UTC); the truncate after it moved mtime only.
    assert st.st_atime == 981173106
