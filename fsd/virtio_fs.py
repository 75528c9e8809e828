"""The virtio-fs device: what fsd offers the VMM, and its config space.

This is the only place that knows both vhost-user and virtio-fs: the generic vhost-user code
never imports FUSE, and the FUSE server never sees a virtqueue.
"""

from __future__ import annotations

import struct
from typing import Final

from fsd.vhost_user.backend import DeviceSpec
from fsd.vhost_user.messages import ProtocolFeatures, VirtioFeatures

__all__ = ["HIPRIO_QUEUE", "NUM_QUEUES", "TAG_MAX", "virtio_fs_device"]

HIPRIO_QUEUE: Final = 0
#: Request queues the device can serve (QEMU's ``num-request-queues`` up to this; each
#: running queue gets a worker thread).
MAX_REQUEST_QUEUES: Final = 8
#: What the config space suggests to front-ends that read it (crosvm): one request queue,
#: as virtiofsd; a Linux guest sends from the first request queue only before 6.x anyway.
NUM_REQUEST_QUEUES: Final = 1
NUM_QUEUES: Final = 1 + MAX_REQUEST_QUEUES
TAG_MAX: Final = 36
_CONFIG: Final = struct.Struct(f"<{TAG_MAX}sI")

FEATURES: Final = (
    VirtioFeatures.VERSION_1
    | VirtioFeatures.PROTOCOL_FEATURES
    | VirtioFeatures.RING_EVENT_IDX
    | VirtioFeatures.RING_INDIRECT_DESC
)
PROTOCOL_FEATURES: Final = (
    ProtocolFeatures.MQ | ProtocolFeatures.REPLY_ACK | ProtocolFeatures.CONFIGURE_MEM_SLOTS
)


def virtio_fs_device(tag: str | None = None) -> DeviceSpec:
    """The device spec; CONFIG (the tag in config space) only when a tag is given, because
    QEMU 7.1–8.0 may crash when CONFIG is offered, and QEMU builds the config itself."""
    if tag is None:
        return DeviceSpec(NUM_QUEUES, int(FEATURES), int(PROTOCOL_FEATURES))
    encoded = tag.encode()
    if not 0 < len(encoded) <= TAG_MAX:
        raise ValueError(f"tag must be 1 to {TAG_MAX} bytes, got {len(encoded)}")
    return DeviceSpec(
        NUM_QUEUES,
        int(FEATURES),
        int(PROTOCOL_FEATURES | ProtocolFeatures.CONFIG),
        _CONFIG.pack(encoded, NUM_REQUEST_QUEUES),
    )
