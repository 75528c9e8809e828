"""The FUSE layer: wire ABI, pure codec, session negotiation and the request server."""

from fsd.fuse.errors import ProtocolError
from fsd.fuse.server import FuseServer, Transport
from fsd.fuse.session import FuseSession

__all__ = ["FuseServer", "FuseSession", "ProtocolError", "Transport"]
