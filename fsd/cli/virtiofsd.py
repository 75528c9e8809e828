"""virtiofsd's command-line conventions that are not plain options: the legacy ``-o`` list,
its defaults (``fsd-vhost-user`` starts from them), ``--print-capabilities``, and the options
fsd refuses with the reason why.

``-o`` is the C virtiofsd's option list, still emitted by libvirt before 9.x's
``separate-options`` (``-o source=/srv,cache=none,xattr``) and accepted by the Rust
virtiofsd for compatibility. Its values override the long options, as in virtiofsd. A comma
inside a value is written twice (libvirt escapes ``source=/a,b`` as ``source=/a,,b``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Final

import attrs

from fsd.cli.errors import StartupError

__all__ = [
    "CACHE_TIMEOUTS",
    "CAPABILITIES",
    "REFUSED",
    "SANDBOX_MODES",
    "SECCOMP_ACTIONS",
    "VIRTIOFSD_DEFAULTS",
    "CompatOptions",
    "capabilities_json",
    "parse_compat_options",
    "split_compat_list",
]

#: What ``fsd-vhost-user`` starts from: virtiofsd 1.13's defaults where they differ from
#: ``fsd serve``'s (no xattrs, no KILLPRIV_V2, submounts announced, file handles preferred,
#: the 1 s cache lifetime of ``--cache auto``). Explicit options win over them.
VIRTIOFSD_DEFAULTS: Final[dict[str, object]] = {
    "xattr": False,
    "killpriv_v2": False,
    "announce_submounts": True,
    "inode_file_handles": "prefer",
    "timeout": 1.0,
}
#: ``--sandbox`` and ``--seccomp`` values (virtiofsd's), the default first.
SANDBOX_MODES: Final = ("namespace", "chroot", "none")
SECCOMP_ACTIONS: Final = ("kill", "log", "trap", "none")
#: virtiofsd's entry and attribute cache lifetime for each ``--cache`` policy.
CACHE_TIMEOUTS: Final = {"never": 0.0, "auto": 1.0, "always": 86400.0, "metadata": 86400.0}
#: ``--print-capabilities``: the vhost-user.json back-end features fsd really has. It takes
#: virtiofsd's separate options (``--shared-dir``, ``--cache``...), so libvirt may use them;
#: it cannot migrate (no ``migrate-precopy``).
CAPABILITIES: Final = {"type": "fs", "features": ["separate-options"]}

_CACHE_VALUES: Final = {
    "auto": "auto",
    "always": "always",
    "none": "never",
    "never": "never",
    "metadata": "metadata",
}
_LOG_LEVELS: Final = {"debug": "debug", "info": "info", "warn": "warn", "err": "error"}
#: ``-o`` flags that set an option, as (field, value).
_FLAGS: Final[dict[str, tuple[str, object]]] = {
    "xattr": ("xattr", True),
    "no_xattr": ("xattr", False),
    "writeback": ("writeback", True),
    "no_writeback": ("writeback", False),
    "allow_direct_io": ("allow_direct_io", True),
    "no_allow_direct_io": ("allow_direct_io", False),
    "announce_submounts": ("announce_submounts", True),
    "killpriv_v2": ("killpriv_v2", True),
    "no_killpriv_v2": ("killpriv_v2", False),
    "posix_acl": ("posix_acl", True),
    "no_posix_acl": ("posix_acl", False),
    "readdirplus": ("readdirplus", True),
    "no_readdirplus": ("readdirplus", False),
}
#: ``-o`` flags that ask for what fsd does anyway: accepted, said once in the log.
_AS_FSD_DOES: Final = {
    "no_security_label": "fsd has no security label support",
    "flock": "fsd serves flock locks as host locks",
    "posix_lock": "fsd serves POSIX locks as host locks",
    "no_flock": "fsd serves flock locks as host locks anyway (virtiofsd ignores it too)",
    "no_posix_lock": "fsd serves POSIX locks as host locks anyway (virtiofsd ignores it too)",
}
#: Options fsd refuses, with why (the same reasons for ``-o`` and long forms).
REFUSED: Final = {
    "security_label": "security labels (FUSE_SECURITY_CTX) are not supported by fsd; "
    "leave the option out",
    "migration": "fsd cannot migrate a device's state; leave the option out",
}


@attrs.define
class CompatOptions:
    """What a ``-o`` list asked for."""

    #: ``source=``: the shared directory.
    source: str | None = None
    #: FsOptions fields it sets (``cache`` also sets virtiofsd's ``timeout`` for it).
    fields: dict[str, object] = attrs.field(factory=dict)
    #: ``loglevel=``, as a ``--log-level`` value.
    log_level: str | None = None
    #: ``sandbox=``, ``modcaps=``: as ``--sandbox`` and ``--modcaps``.
    sandbox: str | None = None
    modcaps: str | None = None
    #: Lines for the log: options accepted without changing anything in fsd.
    notes: list[str] = attrs.field(factory=list)


def split_compat_list(text: str) -> list[str]:
    """Split one ``-o`` argument at single commas; ``,,`` is a literal comma."""
    items: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == ",":
            if text[i + 1 : i + 2] == ",":
                current.append(",")
                i += 2
                continue
            items.append("".join(current))
            current = []
        else:
            current.append(text[i])
        i += 1
    items.append("".join(current))
    return [item for item in items if item]


def parse_compat_options(lists: Iterable[str]) -> CompatOptions:
    """Parse every ``-o`` argument, in order (a later value wins). Raises StartupError for
    an unknown or refused item, naming it."""
    out = CompatOptions()
    for text in lists:
        for item in split_compat_list(text):
            key, eq, value = item.partition("=")
            if eq:
                _compat_value(out, key, value, item)
            else:
                _compat_flag(out, key)
    return out


def _compat_value(out: CompatOptions, key: str, value: str, item: str) -> None:
    if key == "source":
        if not value:
            raise StartupError("-o source=: the shared directory is empty")
        out.source = value
    elif key == "cache":
        if value not in _CACHE_VALUES:
            raise StartupError(f"-o cache={value}: expected auto, always, none or metadata")
        policy = _CACHE_VALUES[value]
        out.fields["cache"] = policy
        out.fields["timeout"] = CACHE_TIMEOUTS[policy]
    elif key == "xattrmap":
        out.fields["xattrmap_text"] = value
    elif key in ("loglevel", "log_level"):
        if value not in _LOG_LEVELS:
            raise StartupError(f"-o {item}: expected debug, info, warn or err")
        out.log_level = _LOG_LEVELS[value]
    elif key == "sandbox":
        if value not in SANDBOX_MODES:
            raise StartupError(f"-o {item}: expected {', '.join(SANDBOX_MODES)}")
        out.sandbox = value
    elif key == "modcaps":
        out.modcaps = value
    else:
        raise StartupError(f"-o {item}: unknown option ({_KNOWN})")


def _compat_flag(out: CompatOptions, key: str) -> None:
    if key in _FLAGS:
        field, value = _FLAGS[key]
        out.fields[field] = value
    elif key in _AS_FSD_DOES:
        out.notes.append(f"-o {key}: {_AS_FSD_DOES[key]}")
    elif key == "security_label":
        raise StartupError(f"-o {key}: {REFUSED[key]}")
    elif key == "debug":
        out.log_level = "debug"
    else:
        raise StartupError(f"-o {key}: unknown option ({_KNOWN})")


_KNOWN: Final = (
    "fsd takes source=, cache=, xattrmap=, loglevel=, sandbox=, modcaps= and "
    + ", ".join(sorted([*_FLAGS, *_AS_FSD_DOES, "debug"]))
)


def capabilities_json() -> str:
    """``--print-capabilities``' output (QEMU's docs/interop/vhost-user.json convention)."""
    return json.dumps(CAPABILITIES, indent=2) + "\n"
