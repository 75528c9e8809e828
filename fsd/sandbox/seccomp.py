"""A seccomp allowlist through libseccomp (ctypes): every system call outside
:data:`fsd.sandbox.syscalls.ALLOWED` gets the configured action.

Why libseccomp rather than a BPF program written here: the filter is a security boundary,
and libseccomp is the tested implementation of everything around the list itself (the
architecture check that stops a 32-bit or x32 system call from slipping past a 64-bit
number, names resolved to this architecture's numbers, the kernel's action codes and their
fall-backs). fsd only hands it names. libseccomp2 is on every Debian system (apt depends on
it); the binding is five plain C calls with integer and string arguments.

Actions, as virtiofsd's ``--seccomp``:

- ``kill``: the whole process dies with SIGSYS (SECCOMP_RET_KILL_PROCESS).
- ``trap``: SIGSYS to the calling thread, which writes every thread's Python traceback to
  stderr (so the line that made the call is known); the main thread then exits with status
  159 (128 + SIGSYS). For debugging: the call did not run, and until the exit its caller may
  go on with a meaningless result.
- ``log``: the call is allowed and the kernel logs it (audit type 1326, ``dmesg``: the
  number is in ``syscall=``): for finding what a new workload needs.
- ``none``: no filter.
"""

from __future__ import annotations

import ctypes
import enum
import faulthandler
import functools
import logging
import os
import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

__all__ = [
    "SeccompAction",
    "SeccompError",
    "SeccompFilter",
    "install_filter",
    "load_library",
    "syscall_name",
]

log = logging.getLogger("fsd.sandbox")

SCMP_ACT_KILL_PROCESS: Final = 0x80000000
SCMP_ACT_TRAP: Final = 0x00030000
SCMP_ACT_LOG: Final = 0x7FFC0000
SCMP_ACT_ALLOW: Final = 0x7FFF0000
SCMP_FLTATR_CTL_NNP: Final = 3
SCMP_FLTATR_CTL_TSYNC: Final = 4
SCMP_ARCH_NATIVE: Final = 0
SCMP_CMP_EQ: Final = 4
_NR_SCMP_ERROR: Final = -1


class SeccompAction(enum.Enum):
    KILL = "kill"
    LOG = "log"
    TRAP = "trap"
    NONE = "none"


_ACTIONS: Final = {
    SeccompAction.KILL: SCMP_ACT_KILL_PROCESS,
    SeccompAction.TRAP: SCMP_ACT_TRAP,
    SeccompAction.LOG: SCMP_ACT_LOG,
}


class _ArgCmp(ctypes.Structure):
    """libseccomp's ``struct scmp_arg_cmp``: argument ``arg`` compared by ``op``."""

    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


class SeccompError(OSError):
    """libseccomp is missing or refused the filter."""


@dataclass(frozen=True)
class SeccompFilter:
    """What was installed: the action and the allowed calls this architecture knows."""

    action: SeccompAction
    allowed: frozenset[str]
    unknown: frozenset[str]


@functools.cache
def load_library() -> ctypes.CDLL:
    """libseccomp, loaded once: before the sandbox, which leaves no library to load."""
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError as exc:
        raise SeccompError(
            0, f"--seccomp needs libseccomp (Debian: apt install libseccomp2): {exc}"
        ) from None
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.restype = None
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_syscall_resolve_num_arch.argtypes = [ctypes.c_uint32, ctypes.c_int]
    lib.seccomp_syscall_resolve_num_arch.restype = ctypes.c_void_p
    return lib


def syscall_name(number: int) -> str:
    """This architecture's name for system call ``number`` (for reading audit logs)."""
    lib = load_library()
    pointer = lib.seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, number)
    if not pointer:
        return f"syscall_{number}"
    name = ctypes.string_at(pointer).decode()
    ctypes.CDLL(None).free(ctypes.c_void_p(pointer))
    return name


def install_filter(
    action: SeccompAction,
    syscalls: Iterable[str],
    only_with: Mapping[str, tuple[int, int]] | None = None,
) -> SeccompFilter | None:
    """Allow ``syscalls`` and give every other call ``action``, for this process and every
    thread it starts later (and, with TSYNC, any it already has). None for ``none``.

    ``only_with`` allows a call only when one argument equals a value (name: (argument
    index, value)); a name there is allowed with that condition alone, even if ``syscalls``
    lists it too.
    """
    conditions = dict(only_with or {})
    if action is SeccompAction.NONE:
        return None
    lib = load_library()
    ctx = lib.seccomp_init(_ACTIONS[action])
    if not ctx:
        raise SeccompError(0, "seccomp_init failed")
    allowed: set[str] = set()
    unknown: set[str] = set()
    try:
        for attr in (SCMP_FLTATR_CTL_NNP, SCMP_FLTATR_CTL_TSYNC):
            _check(lib.seccomp_attr_set(ctx, attr, 1), "seccomp_attr_set")
        for name in sorted(set(syscalls) | conditions.keys()):
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number == _NR_SCMP_ERROR:
                unknown.add(name)
                continue
            if name in conditions:
                index, value = conditions[name]
                cmp = _ArgCmp(index, SCMP_CMP_EQ, value, 0)
                result = lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, number, 1, cmp)
                _check(result, f"allow {name} with argument {index} = {value:#x}")
            else:
                _check(lib.seccomp_rule_add(ctx, SCMP_ACT_ALLOW, number, 0), f"allow {name}")
            allowed.add(name)
        if action is SeccompAction.TRAP:
            # Before the filter: registering handlers makes system calls of its own.
            signal.signal(signal.SIGSYS, _exit_after_trap)
            faulthandler.register(signal.SIGSYS, all_threads=True, chain=True)
        _check(lib.seccomp_load(ctx), "seccomp_load")
    finally:
        lib.seccomp_release(ctx)
    if unknown:
        log.debug("seccomp: not system calls on this architecture: %s", ", ".join(sorted(unknown)))
    return SeccompFilter(action, frozenset(allowed), frozenset(unknown))


def _exit_after_trap(signum: int, frame: object) -> None:
    """``trap``: faulthandler has written the tracebacks; end the process from the main
    thread. Not by re-raising SIGSYS: as pid 1 of a pid namespace the process would ignore
    it."""
    os.write(2, b"fsd: a system call outside the seccomp allowlist (see above); exiting\n")
    os._exit(128 + signum)


def _check(result: int, what: str) -> None:
    if result < 0:  # libseccomp returns -errno
        raise SeccompError(-result, f"{what}: {os.strerror(-result)}")
