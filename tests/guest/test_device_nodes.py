"""Device nodes and overlayfs whiteouts made by a real guest on the share, checked on the host;
and the share as overlayfs's lower layer (a tmpfs upper in the guest), left untouched.

The guest opens a device node on virtio-fs with its own drivers (a 1:3 node is the guest's
/dev/null), never the host's: fsd creates device nodes but never opens one.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from fsd.testing.guest import GuestRunner

pytestmark = pytest.mark.guest

DEVICES = r"""
set -e
cd dev
mknod wh c 0 0                     # an overlayfs whiteout
mknod chr c 1 3
mknod blk b 7 0
mknod big b 259 70000
mkdir sub
echo "guest_chr=$(stat -c '%F %t:%T' chr)"
echo "guest_big=$(stat -c '%F %t:%T' big)"
echo "guest_wh=$(stat -c '%F %t:%T' wh)"
echo written > chr                 # the guest's own null driver takes it
echo "read_chr=[$(cat chr)]"
mv chr chr.renamed
mv blk sub/blk
echo "moved=$(stat -c '%F %t:%T' sub/blk)"
echo data > f
fsdprobe rename2 f f.moved whiteout
echo "after_whiteout=$(stat -c '%F %t:%T' f)"
echo "moved_data=$(cat f.moved)"
rm big
echo "listing=$(ls | tr '\n' ,)"
"""


def _values(output: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in output.splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def _node(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return stat.S_IFMT(st.st_mode), os.major(st.st_rdev), os.minor(st.st_rdev)


async def test_guest_makes_moves_and_removes_device_nodes(
    run_in_guest: GuestRunner, shared_dir: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("the daemon must be root to create device nodes")
    d = shared_dir / "dev"
    d.mkdir()
    got = _values((await run_in_guest(DEVICES)).output)
    assert got["guest_chr"] == "character special file 1:3"
    assert got["guest_big"] == f"block special file 103:{70000:x}"
    assert got["guest_wh"] == "character special file 0:0"
    assert got["read_chr"] == "[]"
    assert got["moved"] == "block special file 7:0"
    assert got["after_whiteout"] == "character special file 0:0"
    assert got["moved_data"] == "data"
    assert got["listing"].rstrip(",").split(",") == sorted(
        ["chr.renamed", "f", "f.moved", "sub", "wh"]
    )
    assert _node(d / "wh") == (stat.S_IFCHR, 0, 0)
    assert _node(d / "chr.renamed") == (stat.S_IFCHR, 1, 3)
    assert _node(d / "sub" / "blk") == (stat.S_IFBLK, 7, 0)
    assert _node(d / "f") == (stat.S_IFCHR, 0, 0)  # RENAME_WHITEOUT left a whiteout
    assert (d / "f.moved").read_text() == "data\n"
    assert not (d / "big").exists() and not (d / "chr").exists()


OVERLAY = r"""
set -e
load_module overlay
mkdir -p /ovl /merged /stacked
mount -t tmpfs tmpfs /ovl
mkdir /ovl/upper /ovl/work
# The share as the lower layer, a tmpfs upper: what a container runtime does with an image.
mount -t overlay overlay \
    -o lowerdir=$MNT/lower,upperdir=/ovl/upper,workdir=/ovl/work,redirect_dir=on /merged
cd /merged
echo appended >> a.txt                       # copy-up
echo "a=$(cat a.txt | tr '\n' +)"
rm gone.txt                                  # a whiteout in the upper layer
echo "gone_visible=$(test -e gone.txt && echo yes || echo no)"
echo "upper_gone=$(stat -c '%F %t:%T' /ovl/upper/gone.txt)"
mv dir dir.renamed                           # a lower directory renamed (redirect_dir)
echo "renamed=$(cat dir.renamed/inner/x.txt)"
echo "old_dir_visible=$(test -e dir && echo yes || echo no)"
rm -r tree                                   # a lower tree deleted
mkdir newdir && echo new > newdir/n.txt
echo "merged=$(ls | tr '\n' ,)"
cd /
umount /merged
# Whiteouts the guest made on the share, as a layer: the upper of the two lower layers
# hides a file of the lower one (an unpacked image's whiteout, served back by fsd).
mknod $MNT/layer2/hidden.txt c 0 0
mount -t overlay overlay -o lowerdir=$MNT/layer2:$MNT/layer1 /stacked
echo "stacked=$(ls /stacked | tr '\n' ,)"
umount /stacked
umount /ovl
"""


def _tree_digest(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every entry under ``root``: type and mode, size and content hash."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        data = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        out[str(path.relative_to(root))] = (st.st_mode, st.st_size, data)
    return out


async def test_share_as_overlayfs_lower_layer(run_in_guest: GuestRunner, shared_dir: Path) -> None:
    lower = shared_dir / "lower"
    (lower / "dir" / "inner").mkdir(parents=True)
    (lower / "tree" / "deep").mkdir(parents=True)
    (lower / "a.txt").write_text("lower a\n")
    (lower / "gone.txt").write_text("to be deleted\n")
    (lower / "dir" / "inner" / "x.txt").write_text("x in a lower dir\n")
    (lower / "tree" / "deep" / "y.txt").write_text("y\n")
    (shared_dir / "layer1").mkdir()
    (shared_dir / "layer1" / "kept.txt").write_text("kept\n")
    (shared_dir / "layer1" / "hidden.txt").write_text("whited out by layer2\n")
    (shared_dir / "layer2").mkdir()
    before = _tree_digest(lower)
    got = _values((await run_in_guest(OVERLAY)).output)
    assert got["a"] == "lower a+appended+"
    assert got["gone_visible"] == "no"
    assert got["upper_gone"] == "character special file 0:0"
    assert got["renamed"] == "x in a lower dir"
    assert got["old_dir_visible"] == "no"
    assert got["merged"].rstrip(",").split(",") == ["a.txt", "dir.renamed", "newdir"]
    assert got["stacked"].rstrip(",").split(",") == ["kept.txt"]
    assert _tree_digest(lower) == before  # the lower layer is untouched
    assert _node(shared_dir / "layer2" / "hidden.txt") == (stat.S_IFCHR, 0, 0)
