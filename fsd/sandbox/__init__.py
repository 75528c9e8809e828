"""Least privilege for the daemon: a namespace (or chroot) sandbox around the shared directory,
reduced capabilities, no_new_privs and a seccomp allowlist, in virtiofsd's vocabulary
(``--sandbox namespace|chroot|none``, ``--seccomp kill|log|trap|none``, ``--modcaps``).

Standard library only (it also runs under the unprivileged user's system Python in tests).
See :func:`enter_sandbox` for when to call it, and docs/security.md for what it guarantees.
"""

from fsd.sandbox.capabilities import FILE_SERVER_CAPABILITIES, CapabilityError, parse_modcaps
from fsd.sandbox.enter import Sandbox, SandboxConfig, SandboxError, SandboxMode, enter_sandbox
from fsd.sandbox.mounts import HostPath
from fsd.sandbox.seccomp import SeccompAction
from fsd.sandbox.supervisor import accept_signals, hold_signals

__all__ = [
    "FILE_SERVER_CAPABILITIES",
    "CapabilityError",
    "HostPath",
    "Sandbox",
    "SandboxConfig",
    "SandboxError",
    "SandboxMode",
    "SeccompAction",
    "accept_signals",
    "enter_sandbox",
    "hold_signals",
    "parse_modcaps",
]
