"""The vhost-user state machine under any sequence of front-end messages (hypothesis
stateful testing), with the I/O layer's own failures (a memory fd that cannot be mapped, a
queue that cannot start) thrown in.

Properties after every step: no exception escapes ``handle()`` or the I/O callbacks; every
fd a message brought is kept by the state, handed over (MapRegion) or closed, exactly once;
a queue is never started twice without a stop between; a StartQueue can always be carried
out or refused (``queue_config`` answers, never raises); a front-end that waits for a reply
gets exactly one.
"""

from __future__ import annotations

import itertools
import os

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from fsd.vhost_user.backend import (
    BackendState,
    CloseFd,
    MapRegion,
    Reply,
    SetCallFd,
    StartQueue,
    StopQueue,
    UnmapAllRegions,
    UnmapRegion,
)
from fsd.vhost_user.messages import Message
from fsd.virtio_fs import NUM_QUEUES, virtio_fs_device
from tests.vhost_user.sequences import ALWAYS_ANSWERED, MessageSpec, messages, qemu_starts


class BackendSequences(RuleBasedStateMachine):
    """The I/O layer's part, played by the test: it owns the fds the state hands over and
    calls back ``region_failed``/``queue_failed``/``queue_stopped`` as vhost_conn does."""

    def __init__(self) -> None:
        super().__init__()
        self.state = BackendState(virtio_fs_device("fuzz"))
        self.next_fd = itertools.count(100)
        self.given: set[int] = set()
        self.closed: set[int] = set()
        self.handed_over: set[int] = set()
        self.running: set[int] = set()
        self.fail_maps = False
        self.fail_starts = False

    @rule(fail_maps=st.booleans(), fail_starts=st.booleans())
    def io_outcomes(self, fail_maps: bool, fail_starts: bool) -> None:
        """From now on the I/O layer fails (or not) to map memory fds / to start queues."""
        self.fail_maps = fail_maps
        self.fail_starts = fail_starts

    @rule(specs=qemu_starts())
    def start_like_qemu(self, specs: list[MessageSpec]) -> None:
        for spec in specs:
            self.send(spec)

    @rule(spec=messages(with_config=True))
    def send(self, spec: MessageSpec) -> None:
        fds = tuple(next(self.next_fd) for _ in spec.fds)
        self.given.update(fds)
        message = Message(spec.request, spec.flags, spec.payload, fds)
        effects = self.state.handle(message)
        reply_ack = self.state.reply_ack  # as it stands after the message (rust-vmm's rule)
        replies = 0
        for effect in effects:
            match effect:
                case Reply(request, _):
                    assert request == spec.request
                    replies += 1
                case CloseFd(fd):
                    self.release(fd, self.closed)
                case MapRegion(region, fd):
                    self.release(fd, self.handed_over)
                    if self.fail_maps:
                        self.state.region_failed(region)
                case StartQueue(index):
                    assert index not in self.running, f"queue {index} started twice"
                    config = self.state.queue_config(index)
                    if config is None or self.fail_starts:
                        self.state.queue_failed(index)
                    else:
                        assert config.kick_fd in self.state.open_fds()
                        self.running.add(index)
                case StopQueue(index, reply):
                    if index in self.running:
                        self.running.discard(index)
                        self.state.queue_stopped(index, 7)
                    replies += reply
                case SetCallFd(index, fd):
                    assert 0 <= index < NUM_QUEUES
                    assert fd is None or fd in self.state.open_fds()
                case UnmapRegion() | UnmapAllRegions():
                    pass
        assert replies <= 1, effects
        if spec.request in ALWAYS_ANSWERED or (message.need_reply and reply_ack):
            assert replies == 1, effects
        for fd in fds:
            assert fd in self.closed or fd in self.handed_over or fd in self.state.open_fds()

    def release(self, fd: int, where: set[int]) -> None:
        assert fd in self.given, f"fd {fd} was never given"
        assert fd not in self.closed and fd not in self.handed_over, f"fd {fd} released twice"
        assert fd not in self.state.open_fds(), f"fd {fd} released but still held"
        where.add(fd)

    @invariant()
    def fds_are_accounted_for(self) -> None:
        held = self.state.open_fds()
        assert len(held) == len(set(held)), f"an fd is held twice: {held}"
        assert self.given == set(held) | self.closed | self.handed_over

    @invariant()
    def running_queues_agree(self) -> None:
        for index in range(NUM_QUEUES):
            assert self.state.queue_running(index) == (index in self.running)


TestBackendSequences = BackendSequences.TestCase
TestBackendSequences.settings = settings(
    max_examples=int(os.environ.get("FSD_FUZZ_EXAMPLES", "300")),
    stateful_step_count=40,
    deadline=None,
)
