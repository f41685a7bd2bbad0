"""A duplex channel: one ring towards the worker, one back, and their lifetime.

The orchestrator creates a channel, hands its spec to the worker (a small
msgspec value, JSON on the worker's command line), and unlinks every name as
soon as the worker says it has attached. From then on nothing is left in
/dev/shm whatever happens: the kernel frees the objects when the last process
holding them exits, crash or not.

The ring towards the orchestrator has a doorbell pipe (see _ring.py). Its
write end is passed to the worker at spawn (``pass_fds``) and then closed in
the orchestrator, so the worker holds the only write end: when the worker
dies, for any reason, the orchestrator's read end reports end-of-file at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import attrs
import msgspec

from ._errors import PeerGoneError
from ._names import new_base_name
from ._ring import DEFAULT_MAX_MESSAGE_SIZE, RingReader, RingWriter
from ._ring_memory import DEFAULT_RING_CAPACITY, RingMemory, RingSpec

__all__ = ["Channel", "ChannelSpec", "parent_watch"]


class ChannelSpec(msgspec.Struct, frozen=True):
    """What the worker needs to attach: the two rings and the message size limit."""

    to_worker: RingSpec
    to_orchestrator: RingSpec
    max_message_size: int
    # The doorbell's write end, as a file descriptor number in the worker
    # (inherited at the same number through ``pass_fds``).
    doorbell_fd: int

    def to_json(self) -> str:
        return msgspec.json.encode(self).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> ChannelSpec:
        return msgspec.json.decode(text, type=cls)


@attrs.define(eq=False)
class Channel:
    """One side's end of a channel: a reader of the incoming ring, a writer of the outgoing."""

    spec: ChannelSpec
    reader: RingReader
    writer: RingWriter
    _memories: tuple[RingMemory, RingMemory]
    # Orchestrator end: the doorbell's read end, and its write end until the worker has it.
    doorbell_fd: int | None = None
    _doorbell_write_fd: int | None = None

    @classmethod
    def create(
        cls,
        *,
        capacity: int = DEFAULT_RING_CAPACITY,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> Channel:
        """The orchestrator's end: creates both rings (exclusive, 0600) and the doorbell."""
        base = new_base_name()
        to_worker = RingMemory.create(base + "q", capacity=capacity)
        try:
            to_orchestrator = RingMemory.create(base + "r", capacity=capacity)
        except BaseException:
            to_worker.unlink()
            to_worker.close()
            raise
        # Both ends non-inheritable (os.pipe's default): only an explicit pass_fds
        # hands the write end to one worker.
        doorbell_read, doorbell_write = os.pipe()
        os.set_blocking(doorbell_read, False)
        os.set_blocking(doorbell_write, False)
        spec = ChannelSpec(to_worker.spec, to_orchestrator.spec, max_message_size, doorbell_write)
        return cls(
            spec,
            RingReader(to_orchestrator, max_message_size=max_message_size),
            RingWriter(to_worker, max_message_size=max_message_size),
            (to_worker, to_orchestrator),
            doorbell_read,
            doorbell_write,
        )

    @classmethod
    def attach(cls, spec: ChannelSpec) -> Channel:
        """The worker's end: opens the rings the orchestrator created, and rings the doorbell it inherited."""
        to_worker = RingMemory.attach(spec.to_worker)
        try:
            to_orchestrator = RingMemory.attach(spec.to_orchestrator)
        except BaseException:
            to_worker.close()
            raise
        return cls(
            spec,
            RingReader(to_worker, max_message_size=spec.max_message_size),
            RingWriter(to_orchestrator, max_message_size=spec.max_message_size, doorbell_fd=spec.doorbell_fd),
            (to_worker, to_orchestrator),
        )

    @property
    def pass_fds(self) -> tuple[int, ...]:
        """Descriptors the worker must inherit (``pass_fds`` of the spawn)."""
        return () if self._doorbell_write_fd is None else (self._doorbell_write_fd,)

    def close_worker_fds(self) -> None:
        """After spawning: drop our copy of the doorbell's write end, so EOF means the worker is gone."""
        if self._doorbell_write_fd is not None:
            os.close(self._doorbell_write_fd)
            self._doorbell_write_fd = None

    def unlink(self) -> None:
        """Remove every name. Idempotent; safe whether or not the peer attached."""
        for memory in self._memories:
            memory.unlink()

    def close(self) -> None:
        """Unmap and close.

        Only once no thread uses either ring any more: closing a semaphore a
        thread is blocked on is undefined behaviour. The Trio side stops its
        threads first (see ``TrioChannel.aclose``).
        """
        for memory in self._memories:
            memory.close()
        self.close_worker_fds()
        if self.doorbell_fd is not None:
            os.close(self.doorbell_fd)
            self.doorbell_fd = None


def parent_watch(parent_pid: int | None = None) -> Callable[..., None]:
    """An ``interrupt`` for the worker's waits: raises once the parent process is gone.

    A reparented process sees a different parent pid; polling it once a wait
    slice (``WAIT_SLICE``) notices an orchestrator that died without a word,
    on Linux and on macOS alike.
    """
    parent_pid = os.getppid() if parent_pid is None else parent_pid

    def check(*_: object) -> None:
        if os.getppid() != parent_pid:
            raise PeerGoneError(f"the orchestrator (pid {parent_pid}) is gone")

    return check
