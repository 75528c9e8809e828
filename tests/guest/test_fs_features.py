"""The opcodes busybox cannot reach, from a real guest kernel, with their effects on the host.

``fsdprobe`` (contrib/testbed/fsdprobe.c, built into the test bed) makes the syscalls:
xattrs (SETXATTR, GETXATTR with its size probe, LISTXATTR, REMOVEXATTR), POSIX locks between
two guest processes and against a host process (GETLK, SETLK, SETLKW), flock (SETLK with
LK_FLOCK), renameat2 flags (RENAME2), O_TMPFILE + linkat (TMPFILE, LINK), fallocate modes
(FALLOCATE), SEEK_DATA/SEEK_HOLE (LSEEK), copy_file_range (COPY_FILE_RANGE) and statx (the
guest's 6.1 kernel speaks FUSE 7.38, so GETATTR). One boot.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import pytest

from fsd.testing.guest import GuestRunner

pytestmark = pytest.mark.guest

WORKLOAD = r"""
set -e
cd feat
p() { label=$1; shift; echo "@$label $(fsdprobe "$@")"; }
wait_for() {
    n=0
    while [ ! -e "$1" ]; do sleep 0.02; n=$((n + 1)); [ $n -lt 1500 ] || return 1; done
}

# --- xattrs -------------------------------------------------------------------------------------
p set setxattr x.txt user.guest fromguest
p create_again setxattr x.txt user.guest again create
p replace_missing setxattr x.txt user.nope v replace
p get getxattr x.txt user.guest
p get_host getxattr x.txt user.host
p list listxattr x.txt
p remove removexattr x.txt user.host
p get_removed getxattr x.txt user.host

# --- POSIX locks: two guest processes -----------------------------------------------------------
fsdprobe hold posix lock.dat 0 100 /tmp/r1 /tmp/x1 > /tmp/h1 &
holder=$!
wait_for /tmp/r1
echo "@holder pid=$holder"
p getlk getlk lock.dat w 0 10
p getlk_rd_outside getlk lock.dat r 200 10
p setlk setlk lock.dat w 50 10
p setlk_outside setlk lock.dat w 100 10
(sleep 1; touch /tmp/x1) &
p setlkw setlkw lock.dat w 0 10
wait
echo "@hold1 $(cat /tmp/h1)"

# --- flock: two guest processes -----------------------------------------------------------------
fsdprobe hold flock lock.dat 0 0 /tmp/r2 /tmp/x2 > /tmp/h2 &
wait_for /tmp/r2
p flock_nb flock lock.dat ex nb
p flock_posix_free setlk lock.dat w 0 0
(sleep 1; touch /tmp/x2) &
p flock_wait flock lock.dat ex wait
wait
p flock_after flock lock.dat ex nb

# --- POSIX locks against a host process ---------------------------------------------------------
host_step hostlock
p host_getlk getlk host.lock w 0 0
p host_setlk setlk host.lock w 0 0
fsdprobe setlkw host.lock w 0 0 > /tmp/w3 &
waiter=$!
sleep 1
host_step hostunlock
wait $waiter
echo "@host_setlkw $(cat /tmp/w3)"
fsdprobe hold posix host.lock 0 0 /tmp/r4 /tmp/x4 > /tmp/h4 &
wait_for /tmp/r4
echo "@host_probe $(host_step hostprobe)"
touch /tmp/x4
wait
echo "@host_probe_after $(host_step hostprobe)"

# --- renameat2 ----------------------------------------------------------------------------------
p noreplace rename2 ra rb noreplace
p exchange rename2 ra rb exchange
p noreplace_new rename2 ra rc noreplace

# --- O_TMPFILE + linkat -------------------------------------------------------------------------
p tmpfile tmpfile . linked.txt tmpdata

# --- fallocate, SEEK_DATA/SEEK_HOLE -------------------------------------------------------------
dd if=/dev/zero of=holes.bin bs=4096 count=64 conv=fsync status=none
p stat_before statx holes.bin
p punch fallocate holes.bin punch 65536 65536
p hole seek holes.bin hole 0
p data seek holes.bin data 65536
p end_hole seek holes.bin hole 131072
p past_end seek holes.bin data 262144
p alloc fallocate falloc.bin alloc 0 1048576
p keep fallocate falloc.bin keep 1048576 1048576

# --- copy_file_range ----------------------------------------------------------------------------
p copy copy src.bin dst.bin 300000
p copy_partial copy src.bin part.bin 1000

# --- statx --------------------------------------------------------------------------------------
p statx statx x.txt
"""


def _records(output: str) -> dict[str, dict[str, str]]:
    """``@label k=v k=v`` lines as {label: {k: v}}."""
    records: dict[str, dict[str, str]] = {}
    for line in output.splitlines():
        if not line.startswith("@"):
            continue
        label, _, rest = line[1:].partition(" ")
        records[label] = dict(pair.split("=", 1) for pair in rest.split() if "=" in pair)
    return records


class HostLocker:
    """The host process's side: a classic POSIX lock on the shared file, taken on request."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    async def on_step(self, name: str, args: list[str]) -> str:
        if name == "hostlock":
            self.fd = os.open(self.path, os.O_RDWR)
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return "locked"
        if name == "hostunlock":
            assert self.fd is not None
            os.close(self.fd)  # closing drops this process's POSIX locks on the file
            self.fd = None
            return "unlocked"
        if name == "hostprobe":
            fd = os.open(self.path, os.O_RDWR)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    return "state=blocked"
                raise
            finally:
                os.close(fd)
            return "state=free"
        return f"!unknown step {name}"


async def test_features_busybox_cannot_reach(run_in_guest: GuestRunner, shared_dir: Path) -> None:
    feat = shared_dir / "feat"
    feat.mkdir()
    (feat / "x.txt").write_text("xattr target\n")
    os.setxattr(feat / "x.txt", "user.host", b"fromhost")
    (feat / "lock.dat").write_bytes(bytes(4096))
    (feat / "host.lock").write_bytes(bytes(4096))
    (feat / "ra").write_text("A\n")
    (feat / "rb").write_text("B\n")
    src = os.urandom(300_000)
    (feat / "src.bin").write_bytes(src)
    locker = HostLocker(feat / "host.lock")

    result = await run_in_guest(WORKLOAD, on_step=locker.on_step, time_limit=120.0)
    got = _records(result.output)

    # xattrs: the guest's are real host xattrs, the host's show in the guest.
    assert got["set"] == {"ok": "1"}
    assert got["create_again"]["err"] == "EEXIST"
    assert got["replace_missing"]["err"] == "ENODATA"
    assert got["get"] == {"size": "9", "small": "ERANGE", "len": "9", "value": "fromguest"}
    assert got["get_host"]["value"] == "fromhost"
    assert sorted(got["list"]["names"].split(",")) == ["user.guest", "user.host"]
    assert got["remove"] == {"ok": "1"}
    assert got["get_removed"]["err"] == "ENODATA"
    assert os.getxattr(feat / "x.txt", "user.guest") == b"fromguest"
    assert sorted(os.listxattr(feat / "x.txt")) == ["user.guest"]

    # POSIX locks between two guest processes: GETLK names the holder's guest pid.
    holder = got["holder"]["pid"]
    assert got["getlk"] == {"type": "wrlck", "pid": holder, "start": "0", "len": "100"}
    assert got["getlk_rd_outside"] == {"type": "unlck"}
    assert got["setlk"]["err"] == "EAGAIN"
    assert got["setlk_outside"]["ok"] == "1"
    assert got["setlkw"]["ok"] == "1"
    assert int(got["setlkw"]["waited_ms"]) >= 500  # it waited for the holder to let go
    assert got["hold1"]["ok"] == "1"

    # flock: exclusive conflict, independent of POSIX locks, then released.
    assert got["flock_nb"]["err"] in ("EWOULDBLOCK", "EAGAIN")  # the same errno on Linux
    assert got["flock_posix_free"]["ok"] == "1"
    assert int(got["flock_wait"]["waited_ms"]) >= 500
    assert got["flock_after"]["ok"] == "1"

    # Against a host process: the host's lock blocks the guest (pid 0: not a guest process),
    # the guest's waiter gets it once the host lets go, and the guest's lock blocks the host.
    assert got["host_getlk"] == {"type": "wrlck", "pid": "0", "start": "0", "len": "0"}
    assert got["host_setlk"]["err"] == "EAGAIN"
    assert got["host_setlkw"]["ok"] == "1"
    assert int(got["host_setlkw"]["waited_ms"]) >= 500
    assert got["host_probe"] == {"state": "blocked"}
    assert got["host_probe_after"] == {"state": "free"}

    # renameat2: NOREPLACE refuses an existing target, EXCHANGE swaps on the host.
    assert got["noreplace"]["err"] == "EEXIST"
    assert got["exchange"] == {"ok": "1"}
    assert got["noreplace_new"] == {"ok": "1"}
    assert (feat / "rb").read_text() == "A\n"
    assert (feat / "rc").read_text() == "B\n"
    assert not (feat / "ra").exists()

    # O_TMPFILE: nameless until linked, then a plain file on the host.
    assert got["tmpfile"] == {"ok": "1", "nlink_before": "0", "nlink_after": "1"}
    assert (feat / "linked.txt").read_text() == "tmpdata"
    assert (feat / "linked.txt").stat().st_mode & 0o777 == 0o640

    # fallocate: a punched hole frees host blocks and LSEEK finds it; KEEP_SIZE keeps size.
    holes = feat / "holes.bin"
    assert got["punch"]["ok"] == "1"
    assert int(got["punch"]["blocks"]) < int(got["stat_before"]["blocks"])
    assert holes.stat().st_size == 262144
    assert holes.stat().st_blocks * 512 <= 262144 - 65536
    assert got["hole"] == {"pos": "65536"}
    assert got["data"] == {"pos": "131072"}
    assert got["end_hole"] == {"pos": "262144"}
    assert got["past_end"]["err"] == "ENXIO"
    fd = os.open(holes, os.O_RDONLY)
    try:
        assert os.lseek(fd, 0, os.SEEK_HOLE) == 65536
    finally:
        os.close(fd)
    assert (feat / "falloc.bin").stat().st_size == 1048576
    assert got["keep"]["size"] == "1048576"
    assert (feat / "falloc.bin").stat().st_blocks * 512 >= 2 * 1048576

    # copy_file_range: the copy is on the host, byte for byte.
    assert got["copy"]["copied"] == "300000"
    assert (feat / "dst.bin").read_bytes() == src
    assert (feat / "part.bin").read_bytes() == src[:1000]

    # statx: the basic fields, no btime (a 7.38 guest has no STATX, GETATTR has no btime).
    mask = int(got["statx"]["mask"], 16)
    assert mask & 0x7FF == 0x7FF  # STATX_BASIC_STATS
    assert got["statx"]["btime"] == "no"
    assert got["statx"]["size"] == str((feat / "x.txt").stat().st_size)
