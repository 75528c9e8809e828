"""Modules fsd imports only after start-up, imported before the sandbox is entered.

In chroot mode nothing outside the shared directory exists any more, the Python installation
included, so a module first imported after that would fail. The list is measured (see
contrib/measure-sandbox.py): the modules a daemon imported after the point where it enters
the sandbox, over the test suite and the guest workloads.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
from typing import Final

__all__ = ["LATE_IMPORTS", "LATE_LIBRARIES", "preload_late_imports"]

log = logging.getLogger("fsd.sandbox")

LATE_IMPORTS: Final[tuple[str, ...]] = (
    # BEGIN MEASURED
    "email.feedparser",
    "email.parser",
    "fsd.cli.version",
    "fsd.fs.readonly",
    "tomllib",
    "tomllib._parser",
    "tomllib._re",
    "tomllib._types",
    # END MEASURED
)


#: Shared libraries the C library itself loads late: glibc dlopen()s libgcc_s when a thread
#: first exits (pthread_exit unwinds the thread's stack with it), and aborts the process
#: ("libgcc_s.so.1 must be installed for pthread_exit to work") if it cannot: inside the
#: sandbox it cannot. Loaded here, that later dlopen() finds it already in the process.
LATE_LIBRARIES: Final = ("libgcc_s.so.1",)
_loaded: list[ctypes.CDLL] = []


def preload_late_imports() -> None:
    for library in LATE_LIBRARIES:
        try:
            _loaded.append(ctypes.CDLL(library))
        except OSError as exc:
            log.warning("sandbox: cannot preload %s: %s", library, exc)
    for name in LATE_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError as exc:  # an optional module this installation lacks
            log.debug("sandbox: cannot preload %s: %s", name, exc)
