"""A queue worker against a driver that never lets the ring run dry."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import pytest
import trio

from fsd.daemon.pool import WorkerPool
from fsd.daemon.queues import BATCH, LARGE_REPLY, QueueRunner
from fsd.sgbuf import FourBuffers, Segments
from fsd.testing.driver import DriverQueue, GuestAllocator
from fsd.virtio.memory import GuestMemory, GuestRegion
from fsd.virtio.splitq import SplitQueue

MEM = 8 << 20


def ring() -> tuple[DriverQueue, SplitQueue]:
    """A 64-entry queue over fresh memory: the driver's side and the device's."""
    mem = memoryview(bytearray(MEM))
    driver = DriverQueue(mem, GuestAllocator(0, 1 << 20), GuestAllocator(1 << 20, MEM), 64)
    queue = SplitQueue(
        GuestMemory([GuestRegion(0, mem)]),
        size=64,
        desc_gpa=driver.desc_gpa,
        avail_gpa=driver.avail_gpa,
        used_gpa=driver.used_gpa,
        event_idx=True,
    )
    return driver, queue


async def test_stop_is_prompt_while_the_guest_keeps_the_ring_full() -> None:
    driver, queue = ring()
    kick = os.eventfd(0, os.EFD_NONBLOCK)
    call = os.eventfd(0, os.EFD_NONBLOCK)
    served = 0
    busy = threading.Event()

    def busy_guest(request: Segments, reply: Segments) -> int:
        # Every request served makes the guest post another one: the ring never empties.
        nonlocal served
        served += 1
        if served == 3 * BATCH:
            busy.set()
        driver.take_used()
        driver.add_request(b"x" * 40, 16)
        return 0

    driver.add_request(b"x" * 40, 16)
    runner = QueueRunner(1, queue, kick, call, busy_guest)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.run)
            with trio.fail_after(10):
                await trio.to_thread.run_sync(busy.wait)
            with trio.fail_after(5):
                await runner.stop()
            assert runner.interrupts > 0, "batches end with an interrupt even when never idle"
    finally:
        os.close(kick)
        os.close(call)


async def test_a_pool_answers_others_while_one_request_waits() -> None:
    """With --thread-pool-size, a request blocked on a slow store holds up only itself; a
    stop waits until the pool has answered everything the queue handed it."""
    driver, queue = ring()
    kick = os.eventfd(0, os.EFD_NONBLOCK)
    call = os.eventfd(0, os.EFD_NONBLOCK)
    release = threading.Event()
    fast_done = threading.Event()
    served: list[bytes] = []

    def handler(request: Segments, reply: Segments) -> int:
        tag = bytes(request[0][:4])
        if tag == b"slow":
            release.wait(10)
        served.append(tag)
        if len(served) == 10:
            fast_done.set()
        reply[0][:4] = tag
        return 4

    pool = WorkerPool(4)
    slow = driver.add_request(b"slow", 16)
    fast = [driver.add_request(b"f%03d" % i, 16) for i in range(10)]
    runner = QueueRunner(1, queue, kick, call, handler, pool=pool)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            nursery.start_soon(runner.run)
            with trio.fail_after(10):
                await trio.to_thread.run_sync(fast_done.wait)
                await trio.to_thread.run_sync(_wait_for, lambda: driver.used_idx >= len(fast))
            assert b"slow" not in served
            used = dict(driver.take_used())
            assert set(used) == set(fast)  # answered, the slow one still out
            nursery.start_soon(runner.stop)
            await trio.sleep(0.3)
            assert runner.queue.next_avail == 11
            assert not driver.take_used(), "a stop must wait for the slow one, not drop it"
            release.set()
            with trio.fail_after(10):
                await runner.stop()
            assert driver.used_idx == 11  # the slow one answered too
            assert driver.written(slow, 4) == b"slow"
            nursery.cancel_scope.cancel()
    finally:
        os.close(kick)
        os.close(call)


def _wait_for(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` from a thread (the pool pushes its answers from its own)."""
    deadline = time.monotonic() + 10
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.005)


def test_four_buffer_chains_go_to_the_four_handler_in_order() -> None:
    """With a four-buffer handler, Linux's most common chains are served through it, every
    other chain through the handler beside it, in ring order, each answered with its own
    reply."""
    driver, queue = ring()
    served: list[tuple[str, bytes]] = []

    def handler(request: Segments, reply: Segments) -> int:
        served.append(("segments", bytes(request[0][:4])))
        reply[0][:2] = b"sg"
        return 2

    def four_handler(buffers: FourBuffers) -> int:
        _, region, o0, _, _, _, o2, _, _, _ = buffers
        served.append(("four", bytes(region[o0 : o0 + 4])))
        region[o2 : o2 + 2] = b"4b"
        return 2

    heads = [
        driver.add_request([b"aaaa", b"args"], [16, 64]),
        driver.add_request([b"bbbb"], [16, 64]),  # three buffers
        driver.add_request([b"cccc", b"args", b"name"], [16, 64]),  # five
        driver.add_request([b"dddd", b"args"], [16, 64], indirect=False),  # not a table
        driver.add_request([b"eeee", b"args"], [16, 64]),
    ]
    kick = os.eventfd(0, os.EFD_NONBLOCK)
    call = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        runner = QueueRunner(1, queue, kick, call, handler, four_handler=four_handler)
        assert runner.drain() is False
    finally:
        os.close(kick)
        os.close(call)
    assert served == [
        ("four", b"aaaa"),
        ("segments", b"bbbb"),
        ("segments", b"cccc"),
        ("segments", b"dddd"),
        ("four", b"eeee"),
    ]
    assert driver.take_used() == [(head, 2) for head in heads]
    assert [driver.written(head, 2) for head in heads] == [b"4b", b"sg", b"sg", b"sg", b"4b"]
    assert runner.chains == 5


def _signals(call: int) -> int:
    """How many interrupts the call eventfd got since last asked (0 if none)."""
    try:
        return os.eventfd_read(call)
    except BlockingIOError:
        return 0


@pytest.mark.parametrize("first_reply", [LARGE_REPLY, LARGE_REPLY - 1])
def test_a_large_reply_is_signalled_before_the_next_chain_is_served(first_reply: int) -> None:
    """Interrupts go once per drain, but a large reply tells the driver at once, so that it
    completes it while the next chain is served (Linux sends a big O_DIRECT read as several
    READs at once). EVENT_IDX still decides: the driver re-arms as it takes the reply."""
    driver, queue = ring()
    kick = os.eventfd(0, os.EFD_NONBLOCK)
    call = os.eventfd(0, os.EFD_NONBLOCK)
    seen: list[int] = []
    sizes = {b"big.": first_reply, b"next": 16, b"last": 16}

    def handler(request: Segments, reply: Segments) -> int:
        signalled = _signals(call)
        seen.append(signalled)
        if signalled:
            driver.take_used()  # the guest's interrupt handler: takes the reply, re-arms
        return sizes[bytes(request[0][:4])]

    for tag in sizes:
        driver.add_request([tag, b"args"], [first_reply, 16])
    try:
        runner = QueueRunner(1, queue, kick, call, handler)
        assert runner.drain() is False
        if first_reply >= LARGE_REPLY:
            assert seen == [0, 1, 0], "told of the large reply before the next was served"
            assert runner.interrupts == 2  # and of the others at the end of the drain
        else:
            assert seen == [0, 0, 0], "small replies wait for the end of the drain"
            assert runner.interrupts == 1
        assert _signals(call) == 1
    finally:
        os.close(kick)
        os.close(call)
