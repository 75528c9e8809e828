"""``Deferred``: who gets the reply and when, and that a finished request lets go of its reply
memory (guest RAM on virtio-fs) without waiting for the garbage collector."""

from __future__ import annotations

import gc
import mmap

from fsd.fuse.abi import OUT_HEADER
from fsd.fuse.deferred import Deferred


def _guest_reply() -> tuple[mmap.mmap, Deferred]:
    mapping = mmap.mmap(-1, 4096)
    return mapping, Deferred(7, [memoryview(mapping)[:64]])


def test_finished_request_releases_its_reply_memory() -> None:
    """The transport's callback refers back to the request (a cycle); if the reply views
    stayed with it, the guest memory mapping would outlive the connection until a collection
    (an idle daemon waiting for the next VMM may never run one)."""
    gc.disable()
    try:
        mapping, deferred = _guest_reply()
        sizes: list[int] = []
        deferred.on_done(lambda size: sizes.append(size) if deferred else None)
        deferred.finish(0)
        assert sizes == [OUT_HEADER.size]
        assert OUT_HEADER.unpack_from(mapping)[2] == 7
        mapping.close()  # BufferError while a view of it is alive
    finally:
        gc.enable()


def test_finish_before_on_done_hands_the_length_over() -> None:
    mapping, deferred = _guest_reply()
    deferred.finish(5)
    sizes: list[int] = []
    deferred.on_done(sizes.append)
    assert sizes == [OUT_HEADER.size]
    assert deferred.done
    deferred.finish(0)  # only once
    assert OUT_HEADER.unpack_from(mapping)[1] == -5
    mapping.close()


def test_cancelled_request_never_calls_back() -> None:
    mapping, deferred = _guest_reply()
    cleaned: list[bool] = []
    deferred.on_cancel = lambda: cleaned.append(True)
    deferred.finish(0)
    deferred.cancel()  # finished, but the transport gave the reply space up before on_done
    calls: list[int] = []
    deferred.on_done(calls.append)
    assert calls == [] and cleaned == [True]
    mapping.close()
