"""The device-side split queue against the test driver, over bytearray guest memory."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsd.sgbuf import four_segments
from fsd.testing.driver import F_INDIRECT, F_NEXT, F_WRITE, DriverQueue, GuestAllocator
from fsd.virtio.memory import GuestMemory, GuestMemoryError, GuestRegion
from fsd.virtio.splitq import OTHER_SHAPE, InvalidChain, QueueBroken, SplitQueue

MEM = 4 << 20


def make(size: int = 8, event_idx: bool = True) -> tuple[DriverQueue, SplitQueue, memoryview]:
    mem = memoryview(bytearray(MEM))
    driver = DriverQueue(mem, GuestAllocator(0, 1 << 20), GuestAllocator(1 << 20, MEM), size)
    device = SplitQueue(
        GuestMemory([GuestRegion(0, mem)]),
        size=size,
        desc_gpa=driver.desc_gpa,
        avail_gpa=driver.avail_gpa,
        used_gpa=driver.used_gpa,
        event_idx=event_idx,
    )
    return driver, device, mem


@pytest.mark.parametrize("indirect", [False, True])
def test_request_and_reply_round_trip(indirect: bool) -> None:
    driver, device, _ = make()
    head = driver.add_request([b"hello ", b"world"], [3, 5], indirect=indirect)
    chain = device.pop()
    assert chain is not None
    got_head, readable, writable = chain
    assert got_head == head
    assert b"".join(bytes(v) for v in readable) == b"hello world"
    assert [len(v) for v in writable] == [3, 5]
    writable[0][:] = b"abc"
    writable[1][:2] = b"de"
    device.push(head, 5)
    assert device.pop() is None
    assert driver.take_used() == [(head, 5)]
    assert driver.written(head, 5) == b"abcde"


def test_memory_spanning_two_regions_is_split() -> None:
    a, b = memoryview(bytearray(4096)), memoryview(bytearray(4096))
    memory = GuestMemory([GuestRegion(0x1000, a), GuestRegion(0x2000, b)])
    views = memory.views(0x1FF0, 32)
    assert [len(v) for v in views] == [16, 16]
    with pytest.raises(GuestMemoryError):
        memory.view(0x1FF0, 32)  # rings must lie inside one region
    with pytest.raises(GuestMemoryError):
        memory.views(0x2FF0, 32)  # runs past the end of guest memory
    with pytest.raises(GuestMemoryError):
        memory.views(0x0, 1)


def write_desc(
    mem: memoryview, table: int, i: int, addr: int, length: int, flags: int, nxt: int
) -> None:
    struct.pack_into("<QIHH", mem, table + 16 * i, addr, length, flags, nxt)


def publish(driver: DriverQueue, mem: memoryview, head: int) -> None:
    struct.pack_into("<H", mem, driver.avail_gpa + 4 + 2 * (driver.avail_idx % driver.size), head)
    driver.avail_idx += 1
    struct.pack_into("<H", mem, driver.avail_gpa + 2, driver.avail_idx)


@pytest.mark.parametrize(
    "descriptors",
    [
        [(0x200000, 16, F_NEXT, 0)],  # loops to itself
        [(MEM - 8, 16, 0, 0)],  # buffer past the end of memory
        [(0x200000, 16, F_WRITE | F_NEXT, 1), (0x200100, 16, 0, 0)],  # readable after writable
        [(0x200000, 16, F_NEXT, 9)],  # next out of range
        [(0x200000, 24, F_INDIRECT, 0)],  # indirect table not a multiple of 16
        [(0x200000, 32, F_INDIRECT | F_NEXT, 1)],  # indirect with NEXT
        [(MEM + 4096, 32, F_INDIRECT, 0)],  # indirect table outside memory
    ],
)
def test_bad_chains_are_consumed_and_reported(descriptors: list[tuple[int, int, int, int]]) -> None:
    driver, device, mem = make()
    for i, (addr, length, flags, nxt) in enumerate(descriptors):
        write_desc(mem, driver.desc_gpa, i, addr, length, flags, nxt)
    publish(driver, mem, 0)
    with pytest.raises(InvalidChain) as info:
        device.pop()
    assert info.value.head == 0
    assert device.pop() is None, "the bad chain was consumed"


def test_nested_indirect_tables_are_refused() -> None:
    driver, device, mem = make()
    write_desc(mem, 0x200000, 0, 0x300000, 16, F_INDIRECT, 0)
    write_desc(mem, driver.desc_gpa, 0, 0x200000, 16, F_INDIRECT, 0)
    publish(driver, mem, 0)
    with pytest.raises(InvalidChain, match="nested"):
        device.pop()


def test_driver_running_ahead_breaks_the_queue() -> None:
    driver, device, mem = make()
    struct.pack_into("<H", mem, driver.avail_gpa + 2, 100)
    with pytest.raises(QueueBroken):
        device.pop()


def test_event_idx_suppresses_and_requests_interrupts() -> None:
    driver, device, _ = make()
    for _ in range(3):
        driver.add_request(b"x", 1)
    driver.set_used_event(1)  # the driver wants an interrupt once used passes index 1
    while (chain := device.pop()) is not None:
        device.push(chain[0], 0)
    assert device.settle() is True
    assert device.settle() is False, "nothing new since the last check"
    driver.take_used()
    driver.set_used_event(10)
    driver.add_request(b"y", 1)
    chain = device.pop()
    assert chain is not None
    device.push(chain[0], 0)
    assert device.settle() is False
    assert driver.avail_event == device.next_avail == 4


def test_settle_reports_chains_that_arrived_meanwhile() -> None:
    """Re-arming and then finding new chains must not lose their kick (nor decide the
    interrupt before they are served)."""
    driver, device, _ = make()
    driver.add_request(b"x", 1)
    chain = device.pop()
    assert chain is not None
    device.push(chain[0], 0)
    driver.add_request(b"y", 1)  # after the device looked, before it re-armed
    assert device.settle() is None
    assert device.settle(rearm=False) is True  # not re-arming: the interrupt is decided
    assert driver.avail_event == device.next_avail == 1


def test_without_event_idx_no_interrupt_flag_is_honoured() -> None:
    driver, device, mem = make(event_idx=False)
    driver.add_request(b"x", 1)
    chain = device.pop()
    assert chain is not None
    device.push(chain[0], 1)
    assert device.settle() is True
    struct.pack_into("<H", mem, driver.avail_gpa, 1)  # VRING_AVAIL_F_NO_INTERRUPT
    driver.add_request(b"x", 1)
    chain = device.pop()
    assert chain is not None
    device.push(chain[0], 1)
    assert device.settle() is False


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=16 * 8, max_size=16 * 8), st.integers(0, 7))
def test_random_descriptor_tables_never_escape(table: bytes, head: int) -> None:
    driver, device, mem = make()
    mem[driver.desc_gpa : driver.desc_gpa + len(table)] = table
    publish(driver, mem, head)
    try:
        chain = device.pop()
    except InvalidChain:
        return
    assert chain is not None
    # Every view is exactly the buffer its descriptor names: a clamped (shortened) slice would
    # mean an address outside memory went unnoticed.
    expected = 0
    index, flags = head, F_NEXT
    for _ in range(8):
        addr, length, flags, nxt = struct.unpack_from("<QIHH", table, 16 * index)
        assert addr + length <= MEM
        expected += length
        if not flags & F_NEXT:
            break
        index = nxt
    got = sum(len(v) for v in chain[1] + chain[2])
    assert got == expected


def test_buffers_that_continue_each_other_become_one_view() -> None:
    """Linux's indirect table, walked inline: descriptors whose buffers follow each other in
    guest memory come out as one view (fewer views, one iovec for a run of pages), never
    across the readable/writable boundary, and the bytes are the same either way."""
    driver, device, mem = make()
    table = 0x200000
    layout = [  # (address, length, writable)
        (0x300000, 16, False),
        (0x300010, 32, False),  # continues the first
        (0x300100, 8, False),  # a gap: a new view
        (0x300108, 16, True),  # continues the last readable one, but is writable
        (0x300118, 4096, True),  # continues it
        (0x302000, 4096, True),  # a gap
        (0x303000, 4096, True),  # continues it
    ]
    for i, (addr, length, to_guest) in enumerate(layout):
        last = i == len(layout) - 1
        flags = (F_WRITE if to_guest else 0) | (0 if last else F_NEXT)
        write_desc(mem, table, i, addr, length, flags, i + 1)
        mem[addr : addr + length] = bytes([i + 1]) * length
    write_desc(mem, driver.desc_gpa, 0, table, 16 * len(layout), F_INDIRECT, 0)
    publish(driver, mem, 0)
    chain = device.pop()
    assert chain is not None
    _, readable, writable = chain
    assert [len(v) for v in readable] == [48, 8]
    assert [len(v) for v in writable] == [16 + 4096, 8192]
    assert b"".join(map(bytes, readable)) == b"\x01" * 16 + b"\x02" * 32 + b"\x03" * 8
    assert bytes(writable[1]) == b"\x06" * 4096 + b"\x07" * 4096


_ADDRS = st.sampled_from([0x300000, 0x300028, 0x300050, 0x301000, MEM - 16, MEM + 4096])
_LENGTHS = st.sampled_from([0, 16, 40, 4096, 1 << 31])
_FLAGS = st.sampled_from([0, F_NEXT, F_WRITE, F_WRITE | F_NEXT, F_INDIRECT, 8 | F_NEXT])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_ADDRS, _LENGTHS, _FLAGS, st.integers(0, 4)), min_size=4, max_size=4),
    st.booleans(),
)
def test_four_descriptor_tables_walk_as_the_general_walk(
    descriptors: list[tuple[int, int, int, int]], linux_shape: bool
) -> None:
    """pop_four() takes Linux's most common table (four descriptors: two readable, two
    writable, in table order) in place and pop() builds its views from that; whatever a table
    holds, both answer as the general walk does: the same bytes readable, the same space
    writable, or (pop_four declining, taking nothing) InvalidChain for both."""
    if linux_shape:  # mostly valid tables, with the addresses and lengths drawn
        shape = [F_NEXT, F_NEXT, F_WRITE | F_NEXT, F_WRITE]
        descriptors = [
            (a, n, f, i + 1)
            for i, ((a, n, _, _), f) in enumerate(zip(descriptors, shape, strict=True))
        ]
    driver, device, mem = make()
    table = 0x200000
    for i, (addr, length, flags, nxt) in enumerate(descriptors):
        write_desc(mem, table, i, addr, length, flags, nxt)
    for addr in (0x300000, 0x301000):
        mem[addr : addr + 4096] = bytes(range(256)) * 16
    write_desc(mem, driver.desc_gpa, 0, table, 64, F_INDIRECT, 0)
    publish(driver, mem, 0)
    try:
        expected = device._walk(0)
    except InvalidChain:
        expected = None
    four = device.pop_four()
    if four:  # taken in place: the same buffers, as places in the one memory region
        assert expected is not None and device.next_avail == 1
        request, reply = four_segments(four)
        assert b"".join(map(bytes, request)) == b"".join(map(bytes, expected[0]))
        assert b"".join(map(bytes, reply)) == b"".join(map(bytes, expected[1]))
        device.next_avail = 0  # and again through pop(), the segments it hands everyone else
    else:
        assert four == OTHER_SHAPE and device.next_avail == 0, "declined: nothing taken"
    try:
        chain = device.pop()
    except InvalidChain:
        assert expected is None
        return
    assert chain is not None and expected is not None
    _, readable, writable = chain
    assert b"".join(map(bytes, readable)) == b"".join(map(bytes, expected[0]))
    assert sum(map(len, writable)) == sum(map(len, expected[1]))


def test_linux_four_buffer_requests_are_taken_in_place() -> None:
    """pop_four() takes Linux's most common chain (header and arguments readable, reply
    header and reply writable) as places in the region, declines every other without
    taking it, and answers None only when the ring is empty."""
    driver, device, mem = make()
    assert device.pop_four() is None
    head = driver.add_request([b"h" * 40, b"a" * 40], [16, 4096])
    other = driver.add_request([b"h" * 40, b"a" * 24, b"name\0"], [16, 128])
    four = device.pop_four()
    assert four
    got_head, region, o0, l0, o1, l1, o2, l2, o3, l3 = four
    assert got_head == head and region.obj is mem.obj
    assert (l0, l1, l2, l3) == (40, 40, 16, 4096)
    assert bytes(region[o0 : o0 + l0]) == b"h" * 40 and bytes(region[o1 : o1 + l1]) == b"a" * 40
    region[o2 : o2 + 2] = b"ok"
    region[o3 : o3 + 4] = b"data"
    device.push(head, 20)
    assert driver.written(head, 20) == b"ok" + bytes(14) + b"data"
    assert device.pop_four() == OTHER_SHAPE and device.next_avail == 1
    chain = device.pop_walked()
    assert chain is not None and chain[0] == other
    assert device.pop_four() is None


def test_pop_four_leaves_a_broken_ring_to_the_walk() -> None:
    """An avail index more than a ring ahead is not a shape pop_four() judges: it declines,
    and the walk says the queue is broken."""
    driver, device, mem = make(size=8)
    driver.add_request([b"h" * 40, b"a" * 40], [16, 4096])
    struct.pack_into("<H", mem, driver.avail_gpa + 2, 9)
    assert device.pop_four() == OTHER_SHAPE and device.next_avail == 0
    with pytest.raises(QueueBroken):
        device.pop()
