"""crosvm-compatible dynamic path allowlist: which share paths the guest may reach.

Pure parts: ``paths`` (lexical normalization), ``trie`` (``Allowlist`` and ``Access``),
``protocol`` (the JSON wire format), ``handler`` (apply a packet, policy hooks).
I/O parts: ``server`` (the SOCK_SEQPACKET control socket) and ``client`` (Python API and CLI).
See docs/allowlist.md.
"""

from fsd.allowlist.handler import AllowlistChange, Outcome, handle_packet, handle_request
from fsd.allowlist.paths import ROOT, InvalidPathError, SharePath, format_path, normalize
from fsd.allowlist.trie import DENIED, FULL, TRAVERSE, Access, Allowlist, UpdateError

__all__ = [
    "DENIED",
    "FULL",
    "ROOT",
    "TRAVERSE",
    "Access",
    "Allowlist",
    "AllowlistChange",
    "InvalidPathError",
    "Outcome",
    "SharePath",
    "UpdateError",
    "format_path",
    "handle_packet",
    "handle_request",
    "normalize",
]
