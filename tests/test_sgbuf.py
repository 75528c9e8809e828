"""Scatter-gather buffers: every way a request or reply can be cut into segments."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fsd.sgbuf import BufferTooShort, SgReader, SgWriter

segment_sizes = st.lists(st.integers(0, 9), min_size=1, max_size=6)


def cut(data: bytes, sizes: list[int]) -> list[memoryview]:
    out, pos = [], 0
    for size in sizes:
        out.append(memoryview(bytearray(data[pos : pos + size])))
        pos += size
    return out


@given(segment_sizes, st.data())
def test_writer_views_cover_exactly_the_range(sizes: list[int], data: st.DataObject) -> None:
    total = sum(sizes)
    writer = SgWriter(cut(bytes(range(total)), sizes))
    offset = data.draw(st.integers(0, total))
    n = data.draw(st.integers(0, total - offset))
    views = writer.views(offset, n)
    assert b"".join(bytes(v) for v in views) == bytes(range(total))[offset : offset + n]
    assert all(len(v) for v in views), "no empty iovecs"
    with pytest.raises(BufferTooShort):
        writer.views(offset, total - offset + 1)


@given(segment_sizes, st.data())
def test_writer_write_at_and_pack_at(sizes: list[int], data: st.DataObject) -> None:
    total = sum(sizes)
    segments = cut(bytes(total), sizes)
    writer = SgWriter(segments)
    payload = data.draw(st.binary(max_size=total))
    offset = data.draw(st.integers(0, total - len(payload)))
    writer.write_at(offset, payload)
    joined = b"".join(bytes(s) for s in segments)
    assert joined[offset : offset + len(payload)] == payload
    if total >= 4:
        writer.pack_at(struct.Struct("<I"), 0, 0xDEADBEEF)
        assert b"".join(bytes(s) for s in segments)[:4] == struct.pack("<I", 0xDEADBEEF)


@given(segment_sizes, st.lists(st.integers(0, 12), max_size=5))
def test_reader_reads_in_order_across_segments(sizes: list[int], reads: list[int]) -> None:
    total = sum(sizes)
    content = bytes(range(total))
    reader = SgReader(cut(content, sizes))
    pos = 0
    for i, n in enumerate(reads):
        if n > total - pos:
            with pytest.raises(BufferTooShort):
                reader.read(n)
            continue
        got = b"".join(bytes(v) for v in reader.take_views(n)) if i % 2 else reader.read(n)
        assert got == content[pos : pos + n]
        pos += n
        assert reader.remaining == total - pos
    assert reader.read_rest() == content[pos:]
