"""Wire struct sizes against Linux include/uapi/linux/fuse.h (7.39 layouts)."""

from __future__ import annotations

import struct

import pytest

from fsd.fuse import abi

SIZES = {
    "IN_HEADER": 40,
    "OUT_HEADER": 16,
    "ATTR": 88,
    "ENTRY_OUT": 128,
    "ATTR_OUT": 104,
    "OPEN_OUT": 16,
    "WRITE_OUT": 8,
    "STATFS_OUT": 80,
    "INIT_IN": 64,
    "INIT_OUT": 64,
    "GETATTR_IN": 16,
    "SETATTR_IN": 88,
    "OPEN_IN": 8,
    "CREATE_IN": 16,
    "MKNOD_IN": 16,
    "MKDIR_IN": 8,
    "RENAME_IN": 8,
    "RENAME2_IN": 16,
    "LINK_IN": 8,
    "READ_IN": 40,
    "WRITE_IN": 40,
    "RELEASE_IN": 24,
    "FLUSH_IN": 24,
    "FSYNC_IN": 16,
    "FORGET_IN": 8,
    "BATCH_FORGET_IN": 8,
    "FORGET_ONE": 16,
    "ACCESS_IN": 8,
    "DIRENT": 24,
    "FALLOCATE_IN": 32,
    "LSEEK_IN": 24,
    "LSEEK_OUT": 8,
    "COPY_FILE_RANGE_IN": 56,
    "INTERRUPT_IN": 8,
    "STATX_IN": 24,
    "STATX_OUT": 288,
}


@pytest.mark.parametrize(("name", "size"), sorted(SIZES.items()))
def test_struct_size(name: str, size: int) -> None:
    st = getattr(abi, name)
    assert isinstance(st, struct.Struct)
    assert st.size == size


def test_dirent_sizes_are_8_byte_aligned() -> None:
    assert abi.dirent_size(1) == 32
    assert abi.dirent_size(8) == 32
    assert abi.dirent_size(9) == 40
    assert abi.direntplus_size(5) == 160  # (152 + 5 + 7) & ~7


def test_prototype_grant_matches_flag_bits() -> None:
    from fsd.fuse.session import SUPPORTED_FLAGS

    # The prototype's grant plus POSIX_LOCKS (bit 1), FLOCK_LOCKS (bit 10) and INIT_EXT
    # (bit 30, so that the reply's flags2 counts).
    assert int(SUPPORTED_FLAGS) == 0x44F029 | 0x402 | 0x4000_0000
