"""Adaptive polling (fsd.daemon.polling): the window's rule, and the wait on a real epoll."""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Iterator

import pytest

from fsd.daemon.polling import PollWindow, SpinningWait, make_waiter


def test_window_starts_closed_and_grows_by_doubling_up_to_the_limit() -> None:
    window = PollWindow(20_000)
    assert window.ns == 0
    sizes = []
    for _ in range(5):
        window.slept(10_000)  # shorter than the limit: a longer window might have caught it
        sizes.append(window.ns)
    assert sizes == [4000, 8000, 16000, 20000, 20000]


def test_a_wait_longer_than_the_limit_closes_the_window() -> None:
    window = PollWindow(20_000)
    window.slept(1000)
    window.slept(1000)
    assert window.ns == 8000
    window.slept(20_001)
    assert window.ns == 0


def test_a_limit_below_the_first_window_is_the_window() -> None:
    window = PollWindow(1000)
    window.slept(500)
    assert window.ns == 1000


def test_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        PollWindow(-1)


@pytest.fixture
def kick() -> Iterator[tuple[int, select.epoll]]:
    fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    poller = select.epoll(1)
    poller.register(fd, select.EPOLLIN | select.EPOLLET)
    yield fd, poller
    poller.close()
    os.close(fd)


def _kick_after(fd: int, seconds: float) -> threading.Thread:
    def kick() -> None:
        time.sleep(seconds)
        os.eventfd_write(fd, 1)

    thread = threading.Thread(target=kick)
    thread.start()
    return thread


def test_an_event_during_the_window_is_caught_without_sleeping(
    kick: tuple[int, select.epoll],
) -> None:
    fd, poller = kick
    wait = SpinningWait(poller.poll, 2_000_000_000)
    wait.window.ns = 2_000_000_000  # as if grown: spin up to 2 s
    thread = _kick_after(fd, 0.01)
    events = wait()
    thread.join()
    assert [ready for ready, _ in events] == [fd]
    assert (wait.caught, wait.slept) == (1, 0)
    assert wait.window.ns == 2_000_000_000


def test_a_closed_window_sleeps_and_a_short_sleep_opens_it(
    kick: tuple[int, select.epoll],
) -> None:
    fd, poller = kick
    wait = SpinningWait(poller.poll, 2_000_000_000)
    thread = _kick_after(fd, 0.01)
    events = wait()
    thread.join()
    assert [ready for ready, _ in events] == [fd]
    assert (wait.caught, wait.slept) == (0, 1)
    assert wait.window.ns == 4000  # 10 ms < the 2 s limit: spinning might have caught it


def test_a_spun_out_window_still_sleeps_until_the_event(kick: tuple[int, select.epoll]) -> None:
    """The window ends, the wait goes on (blocking) and the long wait closes the window."""
    fd, poller = kick
    wait = SpinningWait(poller.poll, 1_000_000)
    wait.window.ns = 1_000_000  # 1 ms of spinning, then sleep
    thread = _kick_after(fd, 0.05)
    events = wait()
    thread.join()
    assert [ready for ready, _ in events] == [fd]
    assert (wait.caught, wait.slept) == (0, 1)
    assert wait.window.ns == 0  # 50 ms > the 1 ms limit: no window would have caught it


def test_limit_zero_is_the_plain_blocking_poll(kick: tuple[int, select.epoll]) -> None:
    fd, poller = kick
    wait = make_waiter(poller.poll, 0)
    assert not isinstance(wait, SpinningWait)
    os.eventfd_write(fd, 1)
    assert [ready for ready, _ in wait()] == [fd]
