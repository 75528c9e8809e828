"""What each ``--cfg`` key changes for a real kernel client (the host kernel through
/dev/fuse; a guest's virtiofs caches the same way)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fsd.fs import FsOptions
from fsd.fs.idmap import parse_id_maps
from fsd.testing.mount import devfuse_unavailable, mounted
from fsd.testing.posix_acl import one_user_acl


@contextmanager
def mount_with(share: Path, tmp_path: Path, **options: object) -> Iterator[Path]:
    reason = devfuse_unavailable()
    if reason is not None:
        pytest.skip(reason)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir(exist_ok=True)
    with mounted(share, mountpoint, options=FsOptions(**options)) as mount:  # type: ignore[arg-type]
        yield mount.mountpoint


@pytest.mark.parametrize(("timeout", "sees_change"), [(5.0, False), (0.0, True)])
def test_timeout_is_how_long_attributes_are_trusted(
    share: Path, tmp_path: Path, timeout: float, sees_change: bool
) -> None:
    (share / "f").write_text("x")
    os.chmod(share / "f", 0o644)
    with mount_with(share, tmp_path, timeout=timeout) as mnt:
        assert os.stat(mnt / "f").st_mode & 0o777 == 0o644
        os.chmod(share / "f", 0o600)  # behind the client's back
        seen = os.stat(mnt / "f").st_mode & 0o777
    assert (seen == 0o600) is sees_change


@pytest.mark.parametrize(("negative", "sees_new_file"), [(0.0, True), (30.0, False)])
def test_negative_timeout_caches_missing_names(
    share: Path, tmp_path: Path, negative: float, sees_new_file: bool
) -> None:
    with mount_with(share, tmp_path, timeout=0.0, negative_timeout=negative) as mnt:
        assert not (mnt / "late").exists()
        (share / "late").write_text("created on the host")
        seen = (mnt / "late").exists()
    assert seen is sees_new_file


@pytest.mark.parametrize(("cache", "sees_new_data"), [("always", False), ("never", True)])
def test_cache_policy_decides_whether_reopened_files_reuse_the_page_cache(
    share: Path, tmp_path: Path, cache: str, sees_new_data: bool
) -> None:
    (share / "f").write_bytes(b"old!")
    with mount_with(share, tmp_path, cache=cache, timeout=30.0) as mnt:
        assert (mnt / "f").read_bytes() == b"old!"
        # Same size and (second-granular) mtime kept, so only the cache policy decides.
        st = os.stat(share / "f")
        (share / "f").write_bytes(b"new!")
        os.utime(share / "f", ns=(st.st_atime_ns, st.st_mtime_ns))
        seen = (mnt / "f").read_bytes()
    assert (seen == b"new!") is sees_new_data


def _create_with_umask(path: Path, umask: int) -> None:
    """Create ``path`` (mode 0666) from another process whose umask is ``umask``."""
    code = f"import os; os.umask({umask}); open({str(path)!r}, 'w').close()"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_posix_acl_lets_the_kernel_set_and_inherit_acls(share: Path, tmp_path: Path) -> None:
    """With ``posix_acl`` the host kernel's FUSE client hands ACLs and umasks over: a default
    ACL on the host replaces the creating process's umask; without one the umask applies."""
    (share / "inherit").mkdir()
    os.setxattr(share / "inherit", "system.posix_acl_default", one_user_acl(7, 7, 5, 7, 5))
    (share / "f").touch()
    with mount_with(share, tmp_path, posix_acl=True) as mnt:
        os.setxattr(mnt / "f", "system.posix_acl_access", one_user_acl(6, 6, 4, 6, 0))
        _create_with_umask(mnt / "inherit" / "made", 0o077)
        _create_with_umask(mnt / "plain", 0o077)
        assert os.getxattr(mnt / "f", "system.posix_acl_access") == one_user_acl(6, 6, 4, 6, 0)
    assert os.getxattr(share / "f", "system.posix_acl_access") == one_user_acl(6, 6, 4, 6, 0)
    assert (share / "f").stat().st_mode & 0o777 == 0o660
    made = share / "inherit" / "made"
    assert os.getxattr(made, "system.posix_acl_access") == one_user_acl(6, 7, 5, 6, 4)
    assert made.stat().st_mode & 0o777 == 0o664
    assert (share / "plain").stat().st_mode & 0o777 == 0o600


MMAP_SCRIPT = r"""
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    with mmap.mmap(fd, 7) as mapped:
        print(bytes(mapped[:]).decode())
except OSError as e:
    print(os.strerror(e.errno))
"""


@pytest.mark.parametrize("allow", [False, True])
def test_allow_mmap_lets_direct_io_files_be_mapped_shared(
    share: Path, tmp_path: Path, allow: bool
) -> None:
    """``cache=never`` opens files with FOPEN_DIRECT_IO, which Linux refuses to map shared
    (ENODEV) unless INIT granted DIRECT_IO_ALLOW_MMAP, a capability above bit 31: it counts
    only with INIT_EXT in the reply. (Mapped from another process: a page fault here would
    hold the GIL the in-process server needs to answer it.)"""
    (share / "f").write_bytes(b"mapped!")
    with mount_with(share, tmp_path, cache="never", allow_mmap=allow) as mnt:
        done = subprocess.run(
            [sys.executable, "-c", MMAP_SCRIPT, str(mnt / "f")],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
    assert done.stdout.strip() == ("mapped!" if allow else os.strerror(errno.ENODEV))


def test_posix_acl_ids_follow_the_uid_map(share: Path, tmp_path: Path) -> None:
    """An ACL entry set through the host kernel for user 1000 holds that user's host id."""
    (share / "f").touch()
    maps = parse_id_maps("0 0 1,1000 2000 1", "0 0 1,1000 2000 1")
    with mount_with(share, tmp_path, posix_acl=True, id_maps=maps) as mnt:
        os.setxattr(mnt / "f", "system.posix_acl_access", one_user_acl(6, 6, 4, 6, 0))
        seen = os.getxattr(mnt / "f", "system.posix_acl_access")
    assert os.getxattr(share / "f", "system.posix_acl_access") == one_user_acl(6, 6, 4, 6, 0, 2000)
    assert seen == one_user_acl(6, 6, 4, 6, 0)
