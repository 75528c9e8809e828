"""The status view: what a running ``fsd serve`` or ``fsd mount`` is doing (docs/status.md).

Pure parts: ``snapshot`` (the JSON document, read from the daemon's live parts on demand),
``text`` and ``prometheus`` (its two renderings), ``http`` (the little HTTP spoken),
``latency`` (the optional per-opcode latency histograms). I/O parts: ``server`` (the
``--status-socket``, a task in the daemon's nursery) and ``client`` (``fsd status``).

Nothing here is on the request path: the counters it reports are the FUSE server's and the
queues' own, bumped whether anyone asks or not; only ``--latency-histogram`` adds work per
request, and only when given.
"""

from __future__ import annotations

import attrs

from fsd.status.latency import RequestLatency, timed_handler
from fsd.status.snapshot import DaemonStatus

__all__ = ["DaemonStatus", "RequestLatency", "StatusConfig", "timed_handler"]


@attrs.frozen
class StatusConfig:
    """``--status-socket`` and ``--latency-histogram`` (validated by the CLI)."""

    socket_path: str | None = None
    latency_histogram: bool = False

    def __attrs_post_init__(self) -> None:
        if self.latency_histogram and self.socket_path is None:
            raise ValueError("--latency-histogram needs --status-socket PATH to be read from")
