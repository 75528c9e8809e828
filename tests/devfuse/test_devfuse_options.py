"""What each ``--cfg`` key changes for a real kernel client (the host kernel through
/dev/fuse; a guest's virtiofs caches the same way)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fsd.fs import FsOptions
from fsd.testing.mount import devfuse_unavailable, mounted


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
