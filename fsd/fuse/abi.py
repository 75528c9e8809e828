"""The FUSE wire ABI: opcodes, flag bits and one precompiled struct per wire struct.

Layouts follow Linux ``include/uapi/linux/fuse.h`` (protocol 7.39; every struct is little-endian
on the machines virtio-fs runs on, and its size is fixed by the kernel, so the sizes are checked
in the tests). Nothing here does I/O.
"""

from __future__ import annotations

import enum
import struct
from typing import Final

KERNEL_VERSION: Final = 7
#: Highest minor version whose semantics this server implements. 7.39 adds only STATX and the
#: opt-in DIRECT_IO_ALLOW_MMAP flag: no struct changes size.
KERNEL_MINOR_VERSION: Final = 39
#: Lowest minor version we negotiate down to without compat struct sizes.
MIN_MINOR_VERSION: Final = 31

ROOT_ID: Final = 1

#: Bytes of data we accept per WRITE and return per READ (``max_write``).
MAX_WRITE: Final = 1 << 20
#: ``max_pages`` in INIT: 256 pages of 4 KiB.
MAX_PAGES: Final = 256
#: A transport's request buffer must hold this much (header + write_in + data); libfuse uses
#: the same "header page" slack.
MAX_REQUEST_SIZE: Final = MAX_WRITE + 4096


class Opcode(enum.IntEnum):
    """FUSE request opcodes (``enum fuse_opcode``)."""

    LOOKUP = 1
    FORGET = 2
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36
    BMAP = 37
    DESTROY = 38
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41
    BATCH_FORGET = 42
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46
    COPY_FILE_RANGE = 47
    SETUPMAPPING = 48
    REMOVEMAPPING = 49
    SYNCFS = 50
    TMPFILE = 51
    STATX = 52
    CUSE_INIT = 4096


class InitFlag(enum.IntFlag):
    """``FUSE_*`` capability bits of INIT; bits 32 and up travel in ``flags2``."""

    ASYNC_READ = 1 << 0
    POSIX_LOCKS = 1 << 1
    FILE_OPS = 1 << 2
    ATOMIC_O_TRUNC = 1 << 3
    EXPORT_SUPPORT = 1 << 4
    BIG_WRITES = 1 << 5
    DONT_MASK = 1 << 6
    SPLICE_WRITE = 1 << 7
    SPLICE_MOVE = 1 << 8
    SPLICE_READ = 1 << 9
    FLOCK_LOCKS = 1 << 10
    HAS_IOCTL_DIR = 1 << 11
    AUTO_INVAL_DATA = 1 << 12
    DO_READDIRPLUS = 1 << 13
    READDIRPLUS_AUTO = 1 << 14
    ASYNC_DIO = 1 << 15
    WRITEBACK_CACHE = 1 << 16
    NO_OPEN_SUPPORT = 1 << 17
    PARALLEL_DIROPS = 1 << 18
    HANDLE_KILLPRIV = 1 << 19
    POSIX_ACL = 1 << 20
    ABORT_ERROR = 1 << 21
    MAX_PAGES = 1 << 22
    CACHE_SYMLINKS = 1 << 23
    NO_OPENDIR_SUPPORT = 1 << 24
    EXPLICIT_INVAL_DATA = 1 << 25
    MAP_ALIGNMENT = 1 << 26
    SUBMOUNTS = 1 << 27
    HANDLE_KILLPRIV_V2 = 1 << 28
    SETXATTR_EXT = 1 << 29
    INIT_EXT = 1 << 30
    INIT_RESERVED = 1 << 31
    SECURITY_CTX = 1 << 32
    HAS_INODE_DAX = 1 << 33
    CREATE_SUPP_GROUP = 1 << 34
    HAS_EXPIRE_ONLY = 1 << 35
    DIRECT_IO_ALLOW_MMAP = 1 << 36
    PASSTHROUGH = 1 << 37
    NO_EXPORT_SUPPORT = 1 << 38
    HAS_RESEND = 1 << 39


# fuse_open_out.open_flags
FOPEN_DIRECT_IO: Final = 1 << 0
FOPEN_KEEP_CACHE: Final = 1 << 1
FOPEN_NONSEEKABLE: Final = 1 << 2
FOPEN_CACHE_DIR: Final = 1 << 3
FOPEN_STREAM: Final = 1 << 4
FOPEN_NOFLUSH: Final = 1 << 5

# fuse_attr.flags
#: The entry is a mount point: with SUBMOUNTS granted, the client gives it its own mount.
ATTR_SUBMOUNT: Final = 1 << 0

# fuse_setattr_in.valid
FATTR_MODE: Final = 1 << 0
FATTR_UID: Final = 1 << 1
FATTR_GID: Final = 1 << 2
FATTR_SIZE: Final = 1 << 3
FATTR_ATIME: Final = 1 << 4
FATTR_MTIME: Final = 1 << 5
FATTR_FH: Final = 1 << 6
FATTR_ATIME_NOW: Final = 1 << 7
FATTR_MTIME_NOW: Final = 1 << 8
FATTR_LOCKOWNER: Final = 1 << 9
FATTR_CTIME: Final = 1 << 10
FATTR_KILL_SUIDGID: Final = 1 << 11

# fuse_getattr_in.getattr_flags
GETATTR_FH: Final = 1 << 0
# fuse_fsync_in.fsync_flags
FSYNC_FDATASYNC: Final = 1 << 0
# fuse_release_in.release_flags
RELEASE_FLUSH: Final = 1 << 0
#: the file had a flock(2); lock_owner is the open file's flock owner
RELEASE_FLOCK_UNLOCK: Final = 1 << 1
# fuse_write_in.write_flags
WRITE_CACHE: Final = 1 << 0
WRITE_LOCKOWNER: Final = 1 << 1
WRITE_KILL_SUIDGID: Final = 1 << 2

#: Linux xattr limits (``include/uapi/linux/limits.h``): name, value, and name-list bytes.
XATTR_NAME_MAX: Final = 255
XATTR_SIZE_MAX: Final = 65536
XATTR_LIST_MAX: Final = 65536

# fuse_open_in.open_flags / fuse_create_in.open_flags (HANDLE_KILLPRIV_V2)
OPEN_KILL_SUIDGID: Final = 1 << 0
# fuse_lk_in.lk_flags: the lock is a BSD flock(2), not a POSIX lock
LK_FLOCK: Final = 1 << 0

# renameat2 flags carried by RENAME2
RENAME_NOREPLACE: Final = 1 << 0
RENAME_EXCHANGE: Final = 1 << 1
RENAME_WHITEOUT: Final = 1 << 2

# --- headers -------------------------------------------------------------------------------
#: len, opcode, unique, nodeid, uid, gid, pid, total_extlen (u16) + padding (u16)
IN_HEADER: Final = struct.Struct("<IIQQIIIHH")
#: len, error (negative errno), unique
OUT_HEADER: Final = struct.Struct("<IiQ")

# --- reply bodies --------------------------------------------------------------------------
#: ino, size, blocks, atime, mtime, ctime, atimensec, mtimensec, ctimensec, mode, nlink, uid,
#: gid, rdev, blksize, flags. Times are signed on purpose: the kernel reads them as s64.
ATTR_FORMAT: Final = "QQQqqqIIIIIIIIII"
ATTR: Final = struct.Struct("<" + ATTR_FORMAT)
#: nodeid, generation, entry_valid, attr_valid, entry_valid_nsec, attr_valid_nsec, attr...
ENTRY_OUT: Final = struct.Struct("<QQQQII" + ATTR_FORMAT)
#: attr_valid, attr_valid_nsec, dummy, attr...
ATTR_OUT: Final = struct.Struct("<QII" + ATTR_FORMAT)
#: fh, open_flags, backing_id
OPEN_OUT: Final = struct.Struct("<QIi")
#: size, padding
WRITE_OUT: Final = struct.Struct("<II")
#: blocks, bfree, bavail, files, ffree, bsize, namelen, frsize, padding, spare[6]
STATFS_OUT: Final = struct.Struct("<QQQQQIIII24x")
#: major, minor, max_readahead, flags, max_background, congestion_threshold, max_write,
#: time_gran, max_pages, map_alignment, flags2, max_stack_depth, unused[6]
INIT_OUT: Final = struct.Struct("<IIIIHHIIHHII24x")
#: size, padding (GETXATTR/LISTXATTR size probe)
GETXATTR_OUT: Final = struct.Struct("<II")
#: offset
LSEEK_OUT: Final = struct.Struct("<Q")
#: ino, off, namelen, type; the name follows, padded to 8 bytes
DIRENT: Final = struct.Struct("<QQII")
#: attr_valid, attr_valid_nsec, flags, spare[2], then ``fuse_statx`` (the statx(2) layout):
#: mask, blksize, attributes, nlink, uid, gid, mode, ino, size, blocks, attributes_mask,
#: atime, btime, ctime, mtime (sec, nsec each), rdev_major/minor, dev_major/minor, spare[14]
STATX_OUT: Final = struct.Struct("<QII16x" + "IIQIIIH2xQQQQ" + "qI4x" * 4 + "IIII112x")
#: STATX_TYPE .. STATX_BLOCKS, and the birth time
STATX_BASIC_STATS: Final = 0x7FF
STATX_BTIME: Final = 0x800

# --- request bodies ------------------------------------------------------------------------
#: major, minor, max_readahead, flags, flags2 (when INIT_EXT), unused[11]
INIT_IN: Final = struct.Struct("<IIIII44x")
INIT_IN_V1: Final = struct.Struct("<II")  # major, minor (protocol < 7.6)
INIT_IN_V2: Final = struct.Struct("<IIII")  # + max_readahead, flags
#: nlookup
FORGET_IN: Final = struct.Struct("<Q")
#: count, dummy; followed by count x FORGET_ONE
BATCH_FORGET_IN: Final = struct.Struct("<II")
#: nodeid, nlookup
FORGET_ONE: Final = struct.Struct("<QQ")
#: getattr_flags, dummy, fh
GETATTR_IN: Final = struct.Struct("<IIQ")
#: valid, padding, fh, size, lock_owner, atime, mtime, ctime, atimensec, mtimensec, ctimensec,
#: mode, unused4, uid, gid, unused5
SETATTR_IN: Final = struct.Struct("<IIQQQqqqIIIIIIII")
#: flags, open_flags
OPEN_IN: Final = struct.Struct("<II")
#: flags, mode, umask, open_flags
CREATE_IN: Final = struct.Struct("<IIII")
#: mode, rdev, umask, padding
MKNOD_IN: Final = struct.Struct("<IIII")
#: mode, umask
MKDIR_IN: Final = struct.Struct("<II")
#: newdir
RENAME_IN: Final = struct.Struct("<Q")
#: newdir, flags, padding
RENAME2_IN: Final = struct.Struct("<QII")
#: oldnodeid
LINK_IN: Final = struct.Struct("<Q")
#: fh, offset, size, read_flags/write_flags, lock_owner, flags, padding
READ_IN: Final = struct.Struct("<QQIIQII")
WRITE_IN: Final = READ_IN
#: fh, flags, release_flags, lock_owner
RELEASE_IN: Final = struct.Struct("<QIIQ")
#: fh, unused, padding, lock_owner
FLUSH_IN: Final = struct.Struct("<QIIQ")
#: fh, fsync_flags, padding
FSYNC_IN: Final = struct.Struct("<QII")
#: mask, padding
ACCESS_IN: Final = struct.Struct("<II")
#: fuse_ext_header: size (of the whole extension, a multiple of 8), type. Extensions follow
#: a request's arguments; fuse_in_header.total_extlen counts their 8-byte units.
EXT_HEADER: Final = struct.Struct("<II")
#: The extension type of fuse_supp_groups {nr_groups, groups[]} (types 0-31 are security
#: contexts).
EXT_GROUPS: Final = 32
#: size, flags (SETXATTR without SETXATTR_EXT)
SETXATTR_IN: Final = struct.Struct("<II")
#: size, flags, setxattr_flags, padding (SETXATTR once SETXATTR_EXT is granted)
SETXATTR_EXT_IN: Final = struct.Struct("<IIII")
#: setxattr_flags: the caller may not keep the set-group-ID bit (it is not in the file's
#: group and lacks CAP_FSETID); sent with a POSIX ACL, which the server sets
SETXATTR_ACL_KILL_SGID: Final = 1 << 0
#: size, padding
GETXATTR_IN: Final = struct.Struct("<II")
#: fh, owner, lk (start, end, type, pid), lk_flags, padding (GETLK/SETLK/SETLKW)
LK_IN: Final = struct.Struct("<QQQQIIII")
#: fuse_file_lock.end for "to the end of the file"
OFFSET_MAX: Final = 0x7FFF_FFFF_FFFF_FFFF
#: start, end, type, pid (GETLK's reply)
LK_OUT: Final = struct.Struct("<QQII")
#: fh, flags, cmd, arg, in_size, out_size
IOCTL_IN: Final = struct.Struct("<QIIQII")
#: unique of the interrupted request
INTERRUPT_IN: Final = struct.Struct("<Q")
#: fh, offset, length, mode, padding
FALLOCATE_IN: Final = struct.Struct("<QQQII")
#: fh, offset, whence, padding
LSEEK_IN: Final = struct.Struct("<QQII")
#: fh_in, off_in, nodeid_out, fh_out, off_out, len, flags
COPY_FILE_RANGE_IN: Final = struct.Struct("<QQQQQQQ")
#: getattr_flags, reserved, fh, sx_flags, sx_mask
STATX_IN: Final = struct.Struct("<IIQII")

# Linux dirent types (the top four bits of st_mode)
DT_UNKNOWN: Final = 0
DT_DIR: Final = 4
DT_REG: Final = 8
DT_LNK: Final = 10


def dirent_size(namelen: int) -> int:
    """Bytes one ``fuse_dirent`` takes, name and 8-byte padding included."""
    return (DIRENT.size + namelen + 7) & ~7


def direntplus_size(namelen: int) -> int:
    """Bytes one ``fuse_direntplus`` takes (entry_out + dirent + padded name)."""
    return (ENTRY_OUT.size + DIRENT.size + namelen + 7) & ~7


def op_name(opcode: int) -> str:
    """An opcode's name for logs (``opcode 99`` for one this ABI does not know)."""
    try:
        return Opcode(opcode).name
    except ValueError:
        return f"opcode {opcode}"
