"""Capabilities: the set a file server needs, virtiofsd's ``--modcaps`` syntax, and the drop.

A file server serving many guest users needs to create and chown files as any of them
(CHOWN, FOWNER, SETUID/SETGID for the per-request fsuid/fsgid switch, which the id maps use
too), to bypass permission checks the way the guest's own kernel already decided (DAC_OVERRIDE),
to keep setuid bits on writes (FSETID), to create device nodes (MKNOD) and to set file
capabilities (SETFCAP). That is virtiofsd's default set; everything else is dropped from the
effective, permitted, inheritable, ambient and bounding sets.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterable
from typing import Final

from fsd.sandbox import _linux

__all__ = [
    "CAPABILITIES",
    "FILE_SERVER_CAPABILITIES",
    "CapabilityError",
    "capability_mask",
    "drop_capabilities",
    "mask_names",
    "parse_modcaps",
    "set_no_new_privs",
]

log = logging.getLogger("fsd.sandbox")

CAPABILITIES: Final = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
    "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN",
    "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE",
    "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME",
    "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ",
    "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)  # fmt: skip
"""Capability names in bit order (linux/capability.h), without the ``CAP_`` prefix."""

FILE_SERVER_CAPABILITIES: Final = frozenset(
    {"CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETGID", "SETUID", "MKNOD", "SETFCAP"}
)


class CapabilityError(ValueError):
    """A ``--modcaps`` value that cannot be parsed."""


def parse_modcaps(
    spec: str | None, base: Iterable[str] = FILE_SERVER_CAPABILITIES
) -> frozenset[str]:
    """``+sys_admin:-mknod``: add or remove capabilities from ``base``, left to right.

    Names are case-insensitive, with or without ``cap_``; an empty item, a missing sign or an
    unknown name is an error (as in virtiofsd)."""
    keep = set(base)
    if spec is None:
        return frozenset(keep)
    for item in spec.split(":"):
        if len(item) < 2 or item[0] not in "+-":
            raise CapabilityError(
                f"--modcaps: {item!r} is not +NAME or -NAME (e.g. +sys_admin:-mknod)"
            )
        name = item[1:].upper().removeprefix("CAP_")
        if name not in CAPABILITIES:
            raise CapabilityError(f"--modcaps: unknown capability {item[1:]!r}")
        if item[0] == "+":
            keep.add(name)
        else:
            keep.discard(name)
    return frozenset(keep)


def capability_mask(names: Iterable[str]) -> int:
    mask = 0
    for name in names:
        mask |= 1 << CAPABILITIES.index(name)
    return mask


def mask_names(mask: int) -> frozenset[str]:
    return frozenset(name for bit, name in enumerate(CAPABILITIES) if mask >> bit & 1)


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return len(CAPABILITIES) - 1


def drop_capabilities(keep: frozenset[str]) -> frozenset[str]:
    """Reduce this (single-threaded) process to ``keep`` and return what it now holds:
    ``keep`` minus what it never had. Capabilities are per thread: threads started later
    inherit the reduced sets, threads started earlier would not (the caller checks there
    are none)."""
    _effective, permitted, _inheritable = _linux.capget()
    mask = capability_mask(keep) & permitted
    # The bounding set first: dropping from it needs CAP_SETPCAP, which the capset below
    # removes. Without CAP_SETPCAP (an unprivileged daemon) there is nothing to bound.
    for bit in range(_last_cap() + 1):
        if mask >> bit & 1:
            continue
        try:
            if _linux.prctl(_linux.PR_CAPBSET_READ, bit):
                _linux.prctl(_linux.PR_CAPBSET_DROP, bit)
        except OSError as exc:
            if exc.errno != errno.EPERM:
                raise
            log.debug("sandbox: cannot drop capability %d from the bounding set: %s", bit, exc)
    try:
        _linux.prctl(_linux.PR_CAP_AMBIENT, _linux.PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # a kernel without ambient capabilities (< 4.3)
            raise
    _linux.capset(mask, mask, 0)
    return mask_names(mask)


def set_no_new_privs() -> None:
    """No execve from now on may grant privileges (setuid binaries, file capabilities); also
    what lets an unprivileged process install a seccomp filter."""
    _linux.prctl(_linux.PR_SET_NO_NEW_PRIVS, 1)
