"""The one exception type the FUSE codec raises: a request we cannot decode."""

from __future__ import annotations

import errno

__all__ = ["ProtocolError"]


class ProtocolError(Exception):
    """A malformed request; the server answers it with :attr:`errno` instead of crashing."""

    def __init__(self, message: str, code: int = errno.EINVAL) -> None:
        super().__init__(message)
        self.errno = code
