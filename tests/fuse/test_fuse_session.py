"""INIT negotiation."""

from __future__ import annotations

from fsd.fuse.abi import INIT_OUT, MAX_WRITE, InitFlag
from fsd.fuse.session import SUPPORTED_FLAGS, FuseSession


def test_grants_intersection_of_offer_and_support() -> None:
    session = FuseSession()
    offer = int(InitFlag.ASYNC_READ | InitFlag.EXPORT_SUPPORT | InitFlag.DONT_MASK)
    values = session.negotiate(7, 38, 131072, offer)
    assert len(values) == 12
    assert INIT_OUT.pack(*values)
    assert values[:2] == (7, 38)
    assert values[3] == InitFlag.ASYNC_READ
    assert values[6] == MAX_WRITE
    assert session.initialized


def test_minor_is_the_lower_of_both() -> None:
    session = FuseSession()
    assert session.negotiate(7, 45, 0, 0)[1] == 39
    assert session.negotiate(7, 38, 0, 0)[1] == 38  # a 6.1 guest: no STATX
    assert session.negotiate(7, 31, 0, 0)[1] == 31
    assert session.init_out_size() == 64
    session.negotiate(7, 22, 0, 0)
    assert session.init_out_size() == 24


def test_newer_major_gets_ours_and_stays_uninitialised() -> None:
    session = FuseSession()
    values = session.negotiate(8, 0, 0, 0xFFFFFFFF)
    assert values[:2] == (7, 39)
    assert not session.initialized


def test_optional_flags_only_when_offered() -> None:
    session = FuseSession(InitFlag.WRITEBACK_CACHE)
    granted = session.negotiate(7, 38, 0, int(SUPPORTED_FLAGS | InitFlag.WRITEBACK_CACHE))[3]
    assert granted & InitFlag.WRITEBACK_CACHE
    assert not session.negotiate(7, 38, 0, int(SUPPORTED_FLAGS))[3] & InitFlag.WRITEBACK_CACHE
    session.reset()
    assert not session.initialized
