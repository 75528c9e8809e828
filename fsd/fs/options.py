"""Filesystem options: crosvm's ``--cfg`` keys that fsd honours, with crosvm's defaults."""

from __future__ import annotations

from typing import Literal, get_args

import attrs

from fsd.fs.idmap import IdMaps

__all__ = ["CachePolicy", "FsOptions", "parse_cfg"]

CachePolicy = Literal["never", "auto", "always"]


def _non_negative(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, not {value}")


def _cache_policy(_inst: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if value not in get_args(CachePolicy):
        raise ValueError(f"cache must be one of never, auto, always; not {value!r}")


@attrs.frozen
class FsOptions:
    """How the passthrough filesystem answers the guest (crosvm ``virtio/fs/config.rs``).

    ``cache``: ``never`` opens files with FOPEN_DIRECT_IO, ``always`` keeps the guest page
    cache across opens (FOPEN_KEEP_CACHE, FOPEN_CACHE_DIR), ``auto`` leaves it to the kernel.
    ``timeout`` is both the entry and attribute cache lifetime. ``negative_timeout`` > 0 lets
    the guest cache failed lookups. ``writeback`` asks for the kernel's writeback cache.
    ``rewrite_security_xattrs`` stores guest ``security.*`` xattrs (but ``security.selinux``)
    as ``user.virtiofs.security.*`` on the host. ``id_maps`` (``--uid-map``/``--gid-map``,
    not a ``--cfg`` key) translates guest ids to host ids and back; ``None`` is the identity
    at no cost (docs/credentials.md). ``devices=false`` refuses to create character and
    block device nodes (EPERM), except overlayfs whiteouts (character device 0/0, which name
    no device); fsd never opens a device node either way (docs/security.md).
    """

    cache: CachePolicy = attrs.field(default="auto", validator=_cache_policy)
    timeout: float = attrs.field(default=5.0, converter=float, validator=_non_negative)
    negative_timeout: float = attrs.field(default=0.0, converter=float, validator=_non_negative)
    writeback: bool = False
    rewrite_security_xattrs: bool = False
    id_maps: IdMaps | None = None
    devices: bool = True


_KEYS = {"cache": "cache", "cache_policy": "cache", "timeout": "timeout"}
_KEYS |= {"negative_timeout": "negative_timeout", "writeback": "writeback"}
_KEYS |= {"rewrite_security_xattrs": "rewrite_security_xattrs", "devices": "devices"}
_BOOL_FIELDS = frozenset({"writeback", "rewrite_security_xattrs", "devices"})
#: crosvm keys fsd accepts only with the value that means "off", and why it has no "on".
_UNSUPPORTED = {
    "posix_acl": "POSIX ACLs (FUSE_POSIX_ACL) are not supported; use posix_acl=false",
    "security_ctx": "security contexts (FUSE_SECURITY_CTX) are not supported; "
    "use security_ctx=false",
    "ascii_casefold": "case-insensitive lookups are not supported; use ascii_casefold=false",
    "dax": "DAX is not supported by vhost-user devices",
    "use_dax": "DAX is not supported by vhost-user devices",
}
_TRUE = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def parse_cfg(text: str) -> FsOptions:
    """Parse crosvm's ``--cfg`` syntax: ``key=value`` joined by commas, a bare key means true.

    As in crosvm's serde_keyvalue, a bare first value is the timeout (``--cfg 10``). Unknown
    keys raise :class:`ValueError`, as crosvm's ``deny_unknown_fields`` does. crosvm keys for
    features fsd lacks (``posix_acl``, ``security_ctx``, ``ascii_casefold``, ``dax``) are
    accepted only when they turn the feature off, so a config never silently loses a feature.
    """
    values: dict[str, object] = {}
    for index, item in enumerate(filter(None, (p.strip() for p in text.split(",")))):
        key, eq, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq:
            if index == 0 and key.replace(".", "", 1).isdigit():
                key, raw = "timeout", key
            else:
                raw = "true"
        raw = raw.strip().strip("'\"")
        if key in _UNSUPPORTED:
            if _TRUE.get(raw.lower()) is not False:
                raise ValueError(f"{key}={raw}: {_UNSUPPORTED[key]}")
            continue
        field = _KEYS.get(key)
        if field is None:
            raise ValueError(f"unknown or unsupported fs option {key!r}")
        if field in _BOOL_FIELDS:
            if raw.lower() not in _TRUE:
                raise ValueError(f"{field} must be true or false, not {raw!r}")
            values[field] = _TRUE[raw.lower()]
        else:
            values[field] = raw
    try:
        return FsOptions(**values)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from exc
