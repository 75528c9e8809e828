"""Scatter-gather buffers: every way a request or reply can be cut into segments."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fsd.sgbuf import BufferTooShort, capacity, gather, scatter, views

segment_sizes = st.lists(st.integers(0, 9), min_size=1, max_size=6)


def cut(data: bytes, sizes: list[int]) -> list[memoryview]:
    out, pos = [], 0
    for size in sizes:
        out.append(memoryview(bytearray(data[pos : pos + size])))
        pos += size
    return out


@given(segment_sizes, st.data())
def test_views_cover_exactly_the_range(sizes: list[int], data: st.DataObject) -> None:
    total = sum(sizes)
    segments = cut(bytes(range(total)), sizes)
    assert capacity(segments) == total
    offset = data.draw(st.integers(0, total))
    n = data.draw(st.integers(0, total - offset))
    got = views(segments, offset, n)
    assert b"".join(bytes(v) for v in got) == bytes(range(total))[offset : offset + n]
    assert all(len(v) for v in got), "no empty iovecs"
    with pytest.raises(BufferTooShort):
        views(segments, offset, total - offset + 1)


@given(segment_sizes, st.data())
def test_gather_copies_exactly_the_range(sizes: list[int], data: st.DataObject) -> None:
    total = sum(sizes)
    content = bytes(range(total))
    segments = cut(content, sizes)
    offset = data.draw(st.integers(0, total))
    n = data.draw(st.integers(0, total - offset))
    got = gather(segments, offset, n)
    assert got == content[offset : offset + n] and type(got) is bytes
    segments[0][:] = bytes(len(segments[0]))  # a copy: later changes do not show
    assert got == content[offset : offset + n]
    with pytest.raises(BufferTooShort):
        gather(segments, offset, total - offset + 1)


@given(segment_sizes, st.data())
def test_scatter_writes_exactly_the_range(sizes: list[int], data: st.DataObject) -> None:
    total = sum(sizes)
    segments = cut(bytes(total), sizes)
    payload = data.draw(st.binary(max_size=total))
    offset = data.draw(st.integers(0, total - len(payload)))
    scatter(segments, offset, payload)
    joined = b"".join(bytes(s) for s in segments)
    assert joined == bytes(offset) + payload + bytes(total - offset - len(payload))
    with pytest.raises(BufferTooShort):
        scatter(segments, offset, payload + b"x" * (total - offset - len(payload) + 1))
