"""What serving a request returns besides a reply length: the two replies that are not sent now.

``FuseServer.handle`` (and each handler inside it) returns the number of reply bytes it wrote,
or one of these. Transports test ``size < 0`` once per request and look closer only then.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DEFERRED", "NO_REPLY"]

#: The request is answered later, from another thread (SETLKW; see ``fsd.fuse.deferred``).
DEFERRED: Final = -1
#: The request gets no reply at all (FORGET, BATCH_FORGET, INTERRUPT; DESTROY on virtio-fs).
NO_REPLY: Final = -2
