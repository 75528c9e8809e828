"""FUSE session negotiation (INIT): which protocol version and capabilities both sides use.

Pure: it turns the kernel's ``fuse_init_in`` values into ``fuse_init_out`` values and remembers
the outcome, so the server can refuse requests before INIT and honour what was granted.
"""

from __future__ import annotations

from typing import Final

from fsd.fuse.abi import (
    KERNEL_MINOR_VERSION,
    KERNEL_VERSION,
    MAX_PAGES,
    MAX_WRITE,
    InitFlag,
)

__all__ = ["SUPPORTED_FLAGS", "FuseSession", "InitReply"]

#: Capabilities this server implements and grants whenever the kernel offers them.
#: Not here on purpose: EXPORT_SUPPORT (needs stable handles), SECURITY_CTX (security
#: labels are not supported), CREATE_SUPP_GROUP (the filesystem asks for it when it can
#: take a caller's group), DONT_MASK (the guest applies its umask,
#: so the daemon runs with umask 0), HANDLE_KILLPRIV(_V2), POSIX_ACL. POSIX_LOCKS/FLOCK_LOCKS
#: are real host locks (fsd.fs.locks); SETLKW is answered later, never blocking a queue.
SUPPORTED_FLAGS: Final = (
    InitFlag.ASYNC_READ
    | InitFlag.ATOMIC_O_TRUNC
    | InitFlag.BIG_WRITES
    | InitFlag.AUTO_INVAL_DATA
    | InitFlag.DO_READDIRPLUS
    | InitFlag.READDIRPLUS_AUTO
    | InitFlag.ASYNC_DIO
    | InitFlag.PARALLEL_DIROPS
    | InitFlag.MAX_PAGES
    | InitFlag.POSIX_LOCKS
    | InitFlag.FLOCK_LOCKS
    # The reply's flags2 (capabilities above bit 31: CREATE_SUPP_GROUP, DIRECT_IO_ALLOW_MMAP)
    # counts only if the reply says INIT_EXT too; Linux ignores it otherwise.
    | InitFlag.INIT_EXT
)

#: virtiofsd's values: effectively unlimited background requests.
MAX_BACKGROUND: Final = 0xFFFF
CONGESTION_THRESHOLD: Final = 0xFFFF * 3 // 4

InitReply = tuple[int, ...]
"""The 12 ``fuse_init_out`` fields in wire order (see ``abi.INIT_OUT``)."""


class FuseSession:
    """State of one FUSE connection: uninitialised until INIT, then the negotiated terms."""

    __slots__ = ("flags", "initialized", "major", "max_readahead", "minor", "offered_flags")

    def __init__(self, optional_flags: int = 0, withheld_flags: int = 0) -> None:
        #: What this session grants when the client offers it: ours, and the extra ones the
        #: filesystem asks for (``optional_flags``: WRITEBACK_CACHE from its options...),
        #: less what it withholds (``withheld_flags``: READDIRPLUS with --no-readdirplus).
        self.offered_flags = (SUPPORTED_FLAGS | InitFlag(optional_flags)) & ~InitFlag(
            withheld_flags
        )
        self.initialized = False
        self.major = 0
        self.minor = 0
        self.max_readahead = 0
        self.flags = InitFlag(0)

    def negotiate(self, major: int, minor: int, max_readahead: int, flags: int) -> InitReply:
        """Answer INIT: our version (kernel's minor if lower), granted = ours ∩ offered.

        A kernel with a newer major gets just our major/minor back and will send INIT again
        with ours, as the protocol describes; the session stays uninitialised meanwhile.
        """
        if major > KERNEL_VERSION:
            return (KERNEL_VERSION, KERNEL_MINOR_VERSION) + (0,) * 10
        self.major = KERNEL_VERSION
        self.minor = min(minor, KERNEL_MINOR_VERSION)
        self.max_readahead = max_readahead
        self.flags = InitFlag(flags) & self.offered_flags
        self.initialized = True
        return (
            KERNEL_VERSION,
            self.minor,
            max_readahead,
            int(self.flags) & 0xFFFFFFFF,
            MAX_BACKGROUND,
            CONGESTION_THRESHOLD,
            MAX_WRITE,
            1,  # time_gran: nanosecond timestamps
            MAX_PAGES,
            0,  # map_alignment (no DAX)
            int(self.flags) >> 32,
            0,  # max_stack_depth
        )

    def reset(self) -> None:
        """Forget the negotiation (DESTROY): the next request must be INIT again."""
        self.initialized = False
        self.flags = InitFlag(0)

    def init_out_size(self) -> int:
        """How much of ``fuse_init_out`` to send: old kernels expect the short layouts."""
        if self.minor < 5:
            return 8
        if self.minor < 23:
            return 24
        return 64
