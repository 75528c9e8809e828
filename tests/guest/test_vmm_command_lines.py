"""The virtiofsd command lines VMM managers build, replayed against ``fsd-vhost-user``, each
serving a real guest that reads and writes through the share (issue 9).

* libvirt 9.0 (Debian 12; src/qemu/qemu_virtiofs.c): ``--fd=N -o source=DIR[,cache=...,
  xattr|no_xattr,flock|no_flock,posix_lock|no_posix_lock] [--thread-pool-size=N]``;
* libvirt with virtiofsd's ``separate-options`` capability (which fsd's
  ``--print-capabilities`` advertises): ``--fd=N --shared-dir DIR [--cache never|always]
  [--sandbox MODE] [--xattr] [--thread-pool-size=N] [--rlimit-nofile=N] [--uid-map=:a:b:c:...]``
  (the id maps are what its unprivileged mode adds from /etc/subuid);
* Kata Containers (src/runtime/virtcontainers/virtiofsd.go and its default
  ``virtio_fs_extra_args``): ``--syslog --cache=auto --shared-dir=DIR --fd=3
  --inode-file-handles=prefer --thread-pool-size=1 --announce-submounts``;
* cloud-hypervisor's docs/fs.md: ``--log-level debug --socket-path=S --shared-dir=DIR
  --cache=never --thread-pool-size=$N``.

``--fd`` is replayed as the managers do it: the caller makes the listening socket and the
daemon inherits it as fd 3. ``--sandbox chroot`` (libvirt's line) runs the server chrooted
into the share; the others get fsd's default, the namespace sandbox.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from fsd.fuse.abi import InitFlag
from fsd.testing.guest import GuestImage
from tests.guest.replay import FSD_VHOST_USER, check_share, outcome, serve_guest

pytestmark = pytest.mark.guest


@pytest.fixture
def share(shared_dir: Path) -> Path:
    (shared_dir / "host.txt").write_text("from-host")
    return shared_dir


async def test_libvirt_9_0_default_domain(
    guest_image: GuestImage, share: Path, socket_dir: Path, tmp_path: Path
) -> None:
    """``<filesystem type='mount'><driver type='virtiofs'/><source dir=.../>``: virtiofsd's
    defaults, so no xattrs (the guest's setxattr gets EOPNOTSUPP)."""
    argv = [FSD_VHOST_USER, "--fd=3", "-o", f"source={share}"]
    result, backend = await serve_guest(
        argv, socket_dir / "fs.sock", tmp_path, guest_image, inherit_listener=True
    )
    got = outcome(result, backend)
    check_share(share, got)
    assert got["owner"] == "0:0"
    assert got["xattr"].startswith("err=EOPNOTSUPP")
    assert os.listxattr(share / "guest.txt") == []


async def test_libvirt_9_0_with_cache_xattr_and_locks(
    guest_image: GuestImage, share: Path, socket_dir: Path, tmp_path: Path
) -> None:
    """``<binary xattr='on'><cache mode='always'/><lock posix='on' flock='on'/></binary>``."""
    argv = [FSD_VHOST_USER, "--fd=3", "-o", f"source={share},cache=always,xattr,flock,posix_lock"]
    result, backend = await serve_guest(
        argv, socket_dir / "fs.sock", tmp_path, guest_image, inherit_listener=True
    )
    got = outcome(result, backend)
    check_share(share, got)
    assert got["xattr"] == "ok=1"
    assert os.getxattr(share / "guest.txt", "user.k") == b"v"
    assert "cache=always" in backend.log()


async def test_libvirt_separate_options_unprivileged_id_maps(
    guest_image: GuestImage, share: Path, socket_dir: Path, tmp_path: Path
) -> None:
    """libvirt's session mode maps guest root to the user (1000 here) and guest ids from 1
    to the user's /etc/subuid range; replayed as root, fsd applies the same maps to a
    directory the user owns (as a session's shares are)."""
    os.chown(share, 1000, 1000)
    maps = ["--uid-map=:0:1000:1:", "--uid-map=:1:100000:65536:"]
    maps += ["--gid-map=:0:1000:1:", "--gid-map=:1:100000:65536:"]
    argv = [FSD_VHOST_USER, "--fd=3", "--shared-dir", str(share), "--xattr", *maps]
    result, backend = await serve_guest(
        argv, socket_dir / "fs.sock", tmp_path, guest_image, inherit_listener=True
    )
    got = outcome(result, backend)
    check_share(share, got)
    assert got["owner"] == "0:0"  # in the guest
    st = (share / "guest.txt").stat()
    assert (st.st_uid, st.st_gid) == (1000, 1000)  # on the host


def test_libvirt_separate_options_as_in_issue_9(
    guest_image: GuestImage, share: Path, socket_dir: Path, tmp_path: Path
) -> None:
    argv = [
        FSD_VHOST_USER, "--fd=3", "--shared-dir", str(share), "--cache", "never",
        "--sandbox", "chroot", "--xattr", "--thread-pool-size=16", "--rlimit-nofile=4096",
    ]  # fmt: skip
    result, backend = trio.run(
        serve_guest, argv, socket_dir / "fs.sock", tmp_path, guest_image, True
    )
    check_share(share, outcome(result, backend))


async def test_libvirt_separate_options_without_sandbox_or_pool(
    guest_image: GuestImage, share: Path, socket_dir: Path, tmp_path: Path
) -> None:
    argv = [
        FSD_VHOST_USER, "--fd=3", "--shared-dir", str(share), "--cache", "never", "--xattr",
        "--rlimit-nofile=4096",
    ]  # fmt: skip
    result, backend = await serve_guest(
        argv, socket_dir / "fs.sock", tmp_path, guest_image, inherit_listener=True
    )
    got = outcome(result, backend)
    check_share(share, got)
    assert got["xattr"] == "ok=1"


KATA = ["--syslog", "--cache=auto", "--shared-dir={share}", "--fd=3"]
KATA += ["--inode-file-handles=prefer", "--thread-pool-size=1", "--announce-submounts"]


async def test_kata(guest_image: GuestImage, share: Path, socket_dir: Path, tmp_path: Path) -> None:
    """Kata's line: a thread pool of 1, file handles, submounts, syslog (which falls back to
    stderr where there is no /dev/log)."""
    argv = [FSD_VHOST_USER, *(a.format(share=share) for a in KATA)]
    result, backend = await serve_guest(
        argv, socket_dir / "fs.sock", tmp_path, guest_image, inherit_listener=True
    )
    check_share(share, outcome(result, backend))
    if os.geteuid() == 0:
        assert "file handles do not work" not in backend.log()


def _cloud_hypervisor(share: Path, socket_path: Path, pool: int) -> list[str]:
    return [
        FSD_VHOST_USER, "--log-level", "debug", f"--socket-path={socket_path}",
        f"--shared-dir={share}", "--cache=never", f"--thread-pool-size={pool}",
    ]  # fmt: skip


@pytest.mark.parametrize("pool", [0, 4])
async def test_cloud_hypervisor_docs(
    guest_image: GuestImage, share: Path, socket_dir: Path, tmp_path: Path, pool: int
) -> None:
    """docs/fs.md's line, with $N (the thread pool) 0 and 4."""
    socket_path = socket_dir / "virtiofs"
    result, backend = await serve_guest(
        _cloud_hypervisor(share, socket_path, pool), socket_path, tmp_path, guest_image,
        inherit_listener=False,
    )  # fmt: skip
    check_share(share, outcome(result, backend))
    assert " DEBUG " in backend.log()


async def test_posix_acl_line_with_a_pool_and_no_readdirplus(
    guest_image: GuestImage, share: Path, socket_dir: Path, tmp_path: Path
) -> None:
    """A cloud-hypervisor line as Nix VM set-ups write it (``--thread-pool-size N --posix-acl
    --xattr``), with ``--no-readdirplus``: files created on pool threads with the caller's
    umask, directories listed with READDIR."""
    socket_path = socket_dir / "virtiofs"
    argv = [
        FSD_VHOST_USER, f"--socket-path={socket_path}", f"--shared-dir={share}",
        "--thread-pool-size", "2", "--posix-acl", "--xattr", "--no-readdirplus",
    ]  # fmt: skip
    result, backend = await serve_guest(
        argv, socket_path, tmp_path, guest_image, inherit_listener=False
    )
    check_share(share, outcome(result, backend))
    granted = next(line for line in backend.log().splitlines() if "FUSE session" in line)
    flags = int(granted.rsplit("flags ", 1)[1].split()[0], 16)
    assert flags & InitFlag.POSIX_ACL
    assert not flags & (InitFlag.DO_READDIRPLUS | InitFlag.READDIRPLUS_AUTO)
