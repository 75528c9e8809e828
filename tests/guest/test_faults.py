"""Faults as a real guest sees them (docs/security.md, "Faults"): a full, over-quota or
read-only backing filesystem; a daemon out of fds; the VMM killed while the guest holds open
files and locks, then a new VMM on the same daemon (``reconnect``); SIGTERM while the guest
writes. Where the daemon outlives the guest, what it holds is counted before and after.
The scripted front-end covers the same faults in more detail: tests/daemon/test_faults.py.
"""

from __future__ import annotations

import fcntl
import os
import re
import resource
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
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
from fsd.testing.serve import server_pid
from tests.daemon.faults import btrfs_with_quota, usage

pytestmark = pytest.mark.guest


@pytest.fixture
async def reconnecting(
    guest_image: GuestImage, socket_dir: Path, shared_dir: Path, tmp_path: Path
) -> AsyncIterator[Backend]:
    """``fsd serve --reconnect``: it outlives each guest, so what it holds can be counted."""
    socket_path = socket_dir / "fs.sock"
    argv = [*fsd_serve_command(socket_path, shared_dir), "--reconnect"]
    log_path = tmp_path / "backend.log"
    async with running_backend(
        argv, socket_path, log_path=log_path, env=fsd_env(), ready_text="listening on"
    ) as backend:
        yield backend


def _values(output: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in output.splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def _guest_memory_mappings(pid: int) -> int:
    return sum("/memfd:" in line for line in Path(f"/proc/{pid}/maps").read_text().splitlines())


async def _settled(pid: int, fds: int) -> tuple[int, int, int]:
    """Wait (15 s at most) until ``pid`` is back to ``fds`` fds and maps no guest memory;
    returns (fds, guest memory mappings, RSS KiB)."""
    for _ in range(300):
        if usage(pid).fds <= fds and not _guest_memory_mappings(pid):
            break
        await trio.sleep(0.05)
    now = usage(pid)
    return now.fds, _guest_memory_mappings(pid), now.rss_kib


async def _run_checked(backend: Backend, guest_image: GuestImage, workload: str) -> str:
    result = await run_guest(
        workload, socket_path=backend.socket_path, guest_image=guest_image, time_limit=180
    )
    assert result.exit_status == 0, f"{result.describe()}\n--- backend ---\n{backend.log()}"
    return result.output


# --- the backing filesystem refuses -------------------------------------------------------------

BACKING_ERRORS = r"""
dd if=/dev/zero of=small/fill bs=64k count=32 2> /tmp/e1
echo "enospc=$(grep -o 'No space left on device' /tmp/e1 | head -n1)"
echo "small_size=$(stat -c %s small/fill)"
dd if=/dev/zero of=quota/fill bs=64k count=64 conv=fsync 2> /tmp/e2
echo "edquot=$(grep -o 'Disk quota exceeded' /tmp/e2 | head -n1)"
rm small/fill
host_step readonly
( echo x > small/new ) 2> /tmp/e3
echo "erofs=$(grep -o 'Read-only file system' /tmp/e3 | head -n1)"
mkdir small/dir 2> /tmp/e4
echo "erofs_mkdir=$(grep -o 'Read-only file system' /tmp/e4 | head -n1)"
echo "ro_read=$(cat small/kept)"
echo "still_serving=$(ls | tr '\n' ,)"
"""


@pytest.fixture
def backing_mounts(shared_dir: Path, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """share/small: a 1 MiB tmpfs; share/quota: a btrfs with a 1 MiB quota group limit."""
    if os.geteuid() != 0:
        pytest.skip("mounts filesystems: needs root")
    small, quota = shared_dir / "small", shared_dir / "quota"
    small.mkdir()
    quota.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "fsd-test", str(small)], check=True)
    try:
        why_not = btrfs_with_quota(tmp_path / "btrfs.img", quota)
        if why_not is not None:
            pytest.skip(why_not)
        yield small, quota
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
        subprocess.run(["umount", "-l", str(quota)], check=False)


async def test_guest_sees_enospc_edquot_and_erofs(
    backing_mounts: tuple[Path, Path], reconnecting: Backend, guest_image: GuestImage
) -> None:
    small, _ = backing_mounts
    (small / "kept").write_text("kept")
    pid = server_pid(reconnecting.process.pid)
    idle = usage(pid)

    async def on_step(name: str, args: list[str]) -> str:
        await trio.run_process(["mount", "-o", "remount,ro", str(small)])
        return "done"

    result = await run_guest(
        BACKING_ERRORS,
        socket_path=reconnecting.socket_path,
        guest_image=guest_image,
        on_step=on_step,
        time_limit=180,
    )
    assert result.exit_status == 0, result.describe()
    got = _values(result.output)
    assert got["enospc"] == "No space left on device"
    assert 0 < int(got["small_size"]) <= 1 << 20
    assert got["edquot"] == "Disk quota exceeded"
    assert got["erofs"] == got["erofs_mkdir"] == "Read-only file system"
    assert got["ro_read"] == "kept"
    assert got["still_serving"].rstrip(",").split(",") == ["quota", "small"]
    fds, maps, _ = await _settled(pid, idle.fds)
    assert (fds, maps) == (idle.fds, 0)


# --- the daemon runs out of fds -----------------------------------------------------------------

OUT_OF_FDS = r"""
failed=0
for i in $(seq 0 149); do
    stat -c %s big/f$i > /dev/null 2>> /tmp/err || failed=$((failed + 1))
done
echo "failed=$failed"
echo "emfile=$(grep -c 'Too many open files' /tmp/err)"
echo "other=$(grep -vc 'Too many open files' /tmp/err)"
echo 3 > /proc/sys/vm/drop_caches     # the guest forgets its inodes: fsd closes their fds
sleep 1
ok=0
for i in $(seq 0 149); do
    [ "$(cat big/f$i)" = "$i" ] && ok=$((ok + 1))
    [ $((i % 20)) = 19 ] && echo 3 > /proc/sys/vm/drop_caches
done
echo "readable=$ok"
"""


async def test_guest_sees_emfile_when_the_daemon_runs_out_of_fds(
    reconnecting: Backend, guest_image: GuestImage, shared_dir: Path
) -> None:
    """fsd holds an fd per inode the guest knows (CVE-2020-10717's resource): at the limit,
    lookups answer EMFILE, nothing crashes, and a guest that forgets gets room again."""
    (shared_dir / "big").mkdir()
    for index in range(150):
        (shared_dir / "big" / f"f{index}").write_text(str(index))
    pid = server_pid(reconnecting.process.pid)
    idle = usage(pid)
    # Room for the connection (eventfds, epolls) and about 60 inodes.
    limit = idle.fds + 80
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
    got = _values(await _run_checked(reconnecting, guest_image, OUT_OF_FDS))
    assert int(got["failed"]) > 0 and int(got["emfile"]) == int(got["failed"])
    assert got["other"] == "0"
    assert got["readable"] == "150"
    fds, maps, _ = await _settled(pid, idle.fds)
    assert (fds, maps) == (idle.fds, 0)
    assert "Traceback" not in reconnecting.log()


# --- the VMM dies, and another one comes --------------------------------------------------------

HOLDING = r"""
echo first > held.txt
fsdprobe hold posix held.txt 0 0 /tmp/r1 /tmp/never > /dev/null &
fsdprobe hold flock flocked.txt 0 0 /tmp/r2 /tmp/never > /dev/null &
dd if=/dev/zero of=synced.bin bs=64k count=16 conv=fsync status=none
while [ ! -e /tmp/r1 ] || [ ! -e /tmp/r2 ]; do sleep 0.05; done
exec 4< held.txt 5> open-for-write.txt
echo "@@HOLDING"
sleep 600
"""

AFTER = r"""
echo "posix=$(fsdprobe setlk held.txt w 0 0)"
echo "flock=$(fsdprobe flock flocked.txt ex nb)"
echo "held=$(cat held.txt)"
echo "synced=$(stat -c %s synced.bin)"
"""


async def test_vmm_killed_holding_locks_then_a_new_vmm(
    reconnecting: Backend, guest_image: GuestImage, shared_dir: Path
) -> None:
    """QEMU is SIGKILLed while its guest holds POSIX and BSD locks and open files: the daemon
    drops all of it (the host can lock the files), holds what it held before, and serves the
    next QEMU, whose guest takes the same locks."""
    (shared_dir / "flocked.txt").touch()
    pid = server_pid(reconnecting.process.pid)
    idle = usage(pid)
    with trio.CancelScope() as killer:

        def on_line(line: str) -> None:
            if "@@HOLDING" in line:
                killer.cancel()  # run_guest then SIGKILLs QEMU, as a crashing VMM

        await run_guest(
            HOLDING,
            socket_path=reconnecting.socket_path,
            guest_image=guest_image,
            on_line=on_line,
            time_limit=180,
        )
        pytest.fail("the guest never reported holding its locks")
    fds, maps, rss_after_first = await _settled(pid, idle.fds)
    assert (fds, maps) == (idle.fds, 0)
    for name in ("held.txt", "flocked.txt"):
        fd = os.open(shared_dir / name, os.O_RDWR)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    assert (shared_dir / "synced.bin").stat().st_size == 16 * 65536

    got = _values(await _run_checked(reconnecting, guest_image, AFTER))
    assert got["posix"].startswith("ok=1") and got["flock"].startswith("ok=1")
    assert got["held"] == "first"
    assert got["synced"] == str(16 * 65536)
    fds, maps, rss = await _settled(pid, idle.fds)
    assert (fds, maps) == (idle.fds, 0)
    assert rss - rss_after_first < 16 * 1024
    log = reconnecting.log()
    assert log.count("waiting for the front-end to reconnect") == 2 and "Traceback" not in log


# --- SIGTERM while the guest writes -------------------------------------------------------------

WRITER = r"""
i=0
while [ $i -lt 400 ]; do
    yes "$i" | head -c 65536 | dd of=f$i bs=64k conv=fsync status=none && echo "@synced $i"
    [ $i = 8 ] && host_step term
    i=$((i + 1))
done
"""


async def test_sigterm_while_the_guest_writes(
    guest_image: GuestImage, socket_dir: Path, shared_dir: Path, tmp_path: Path
) -> None:
    """Every file the guest saw fsync'd before the daemon stopped is whole on the host; the
    daemon exits 0. (The guest's later requests get no answer: its VMM must be restarted.)"""
    socket_path = socket_dir / "fs.sock"
    argv = fsd_serve_command(socket_path, shared_dir)
    lines: list[str] = []
    async with running_backend(
        argv, socket_path, log_path=tmp_path / "backend.log", env=fsd_env()
    ) as backend:
        with trio.CancelScope() as guest:

            async def stop_later() -> None:
                await trio.sleep(3)  # the guest goes on writing, into a dead device
                guest.cancel()

            async def on_step(name: str, args: list[str]) -> str:
                backend.process.send_signal(signal.SIGTERM)
                await backend.process.wait()
                nursery.start_soon(stop_later)
                return "terminated"

            async with trio.open_nursery() as nursery:
                await run_guest(
                    WRITER,
                    socket_path=socket_path,
                    guest_image=guest_image,
                    on_step=on_step,
                    on_line=lines.append,
                    time_limit=180,
                )
        assert backend.process.returncode == 0
        log = backend.log()
    assert "SIGTERM: shutting down" in log and "Traceback" not in log, log
    synced = [int(m.group(1)) for line in lines if (m := re.search(r"@synced (\d+)", line))]
    assert len(synced) >= 9, "\n".join(lines)
    for index in synced:
        expected = (f"{index}\n".encode() * 65536)[:65536]
        assert (shared_dir / f"f{index}").read_bytes() == expected
