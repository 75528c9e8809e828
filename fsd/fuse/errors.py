"""Exceptions with a FUSE meaning: a request we cannot decode, a name the allowlist hides."""

from __future__ import annotations

import errno

__all__ = ["HiddenByAllowlist", "ProtocolError"]


class ProtocolError(Exception):
    """A malformed request; the server answers it with :attr:`errno` instead of crashing."""

    def __init__(self, message: str, code: int = errno.EINVAL) -> None:
        super().__init__(message)
        self.errno = code


class HiddenByAllowlist(FileNotFoundError):
    """ENOENT for a name the allowlist hides: answered as an error, never as a negative entry.

    The guest caches a negative entry (nodeid 0) for its timeout but not an error reply, so
    a path added to the allowlist later is found at once.
    """
