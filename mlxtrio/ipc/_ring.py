"""A single-producer/single-consumer ring of variable-length frames in POSIX shared memory.

The shared memory and its header are ``_ring_memory.py``'s; this module is
the protocol its two ends follow. A message is one or more *chunks*; each chunk is a 4-byte little-endian word
(bit 31: more chunks of this message follow; bits 0-30: chunk length) and the
chunk's bytes. Words and bytes wrap around the end of the data area at any
offset. A message longer than the chunk limit (a quarter of the ring) is split,
so a 1 MiB prompt crosses a 256 KiB ring while writer and reader overlap.

Two counting semaphores carry every bit of synchronisation:

``frames``
    chunks published and not yet taken. The writer posts one after copying a
    chunk in; the reader waits on it before reading one.
``slots``
    starts at ``slots`` (the most chunks the ring may hold). The writer takes
    one before publishing a chunk; the reader posts one after it has copied a
    chunk out.

Neither side reads a position the other writes. The writer keeps the sizes of
the chunks it published in order; every unit it takes from ``slots`` beyond
the initial ``slots`` proves that the reader finished one more chunk, so the
writer frees bytes from its own record, never from shared state. Semaphore
post and wait are the memory barriers (release and acquire): data copied in
before a post is visible after the matching wait, which matters on ARM64.

A reader that lives in an event loop (the Trio orchestrator) cannot block in
``sem_wait``; its writer also rings a *doorbell* after every post: one byte
into a non-blocking pipe the reader polls with the event loop. The byte only
says "look at the semaphore"; it carries no data and no ordering of its own.
"""

from __future__ import annotations

import collections
import os
import struct
import time
from collections.abc import Callable

import attrs
import posix_ipc

from ._errors import BrokenRingError, FrameTooLargeError, PeerGoneError, ProtocolError, RingTimeoutError
from ._ring_memory import RingMemory
from ._semaphore import acquire_within, try_acquire

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "WAIT_SLICE", "RingReader", "RingStatistics", "RingWriter"]

_WORD = struct.Struct("<I")
_MORE = 1 << 31
_LENGTH_MASK = _MORE - 1

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
# How long one blocking wait lasts before the waiter looks around (cancellation,
# a closed ring, a dead peer). It bounds how late a dead peer is noticed.
WAIT_SLICE = 0.05

# Called between wait slices; raises to abandon the wait. The writer's gets
# whether part of the message is already published (it must then not be abandoned
# lightly: the ring would be left mid-message).
ReaderInterrupt = Callable[[], None]
WriterInterrupt = Callable[[bool], None]


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _wait(
    sem: posix_ipc.Semaphore, deadline: float | None, interrupt: Callable[[], None] | None
) -> bool:
    """Take one unit from ``sem`` by ``deadline`` (None: no deadline), in slices.

    Between slices ``interrupt`` may raise to abandon the wait. Returns False
    once the deadline has passed without a unit.
    """
    if try_acquire(sem):
        return True
    while True:
        if deadline is None:
            slice_ = WAIT_SLICE
        else:
            slice_ = min(WAIT_SLICE, deadline - time.monotonic())
            if slice_ <= 0:
                return False
        if acquire_within(sem, slice_):
            return True
        if interrupt is not None:
            interrupt()


@attrs.frozen
class RingStatistics:
    messages: int
    chunks: int
    bytes: int


class RingWriter:
    """The producing end. Not thread-safe: one writer at a time (callers serialise)."""

    def __init__(
        self,
        memory: RingMemory,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        doorbell_fd: int | None = None,
    ) -> None:
        self._memory = memory
        self._max_message_size = max_message_size
        # Write end of the reader's doorbell pipe (non-blocking), if it has one.
        self._doorbell_fd = doorbell_fd
        self._offset = 0
        self._used = 0  # bytes published and not yet known to be consumed
        self._published: collections.deque[int] = collections.deque()  # their sizes, oldest first
        self._taken = 0  # units ever taken from ``slots``
        self._held = 0  # units taken and not yet spent on a chunk
        self._known_consumed = 0  # chunks the reader is known to have finished
        self._broken: str | None = None
        self._messages = 0
        self._chunks = 0
        self._bytes = 0

    @property
    def max_message_size(self) -> int:
        return self._max_message_size

    def _took_slot(self) -> None:
        self._taken += 1
        self._held += 1
        consumed = self._taken - self._memory.spec.slots
        while self._known_consumed < consumed:
            self._used -= self._published.popleft()
            self._known_consumed += 1

    def _check(self, payload: bytes | memoryview) -> None:
        if self._broken is not None or self._memory.closed:
            raise BrokenRingError(self._broken or "ring is closed")
        if len(payload) > self._max_message_size:
            raise FrameTooLargeError(
                f"message of {len(payload)} bytes exceeds the limit of {self._max_message_size} bytes"
            )

    def _chunks_of(self, payload: bytes | memoryview) -> list[memoryview]:
        view = memoryview(payload)
        limit = self._memory.chunk_limit
        if len(view) <= limit:
            return [view]
        return [view[start : start + limit] for start in range(0, len(view), limit)]

    def _publish(self, chunk: memoryview, more: bool) -> None:
        need = _WORD.size + len(chunk)
        memory = self._memory
        self._offset = memory.put(self._offset, _WORD.pack(len(chunk) | (_MORE if more else 0)))
        self._offset = memory.put(self._offset, chunk)
        self._held -= 1
        self._used += need
        self._published.append(need)
        self._chunks += 1
        self._bytes += len(chunk)
        memory.frames.release()
        if self._doorbell_fd is not None:
            self._ring_doorbell()

    def _ring_doorbell(self) -> None:
        # After the post, never before: a reader woken by the byte must find the chunk.
        try:
            os.write(self._doorbell_fd, b"\x00")
        except BlockingIOError:
            pass  # The pipe is full of unread wake-ups: the reader will wake anyway.
        except BrokenPipeError:
            raise PeerGoneError("the reading process is gone (its doorbell pipe is closed)") from None

    def try_send(self, payload: bytes | memoryview) -> bool:
        """Publish the whole message now if it fits now; otherwise publish nothing.

        Never blocks. This is the fast path of the Trio side: no thread hop when
        the ring has room, which is nearly always.
        """
        self._check(payload)
        chunks = self._chunks_of(payload)
        need = sum(_WORD.size + len(chunk) for chunk in chunks)
        if need > self._memory.capacity:
            return False
        slots = self._memory.slots
        while self._held < len(chunks) or self._used + need > self._memory.capacity:
            if not try_acquire(slots):
                return False
            self._took_slot()
        for index, chunk in enumerate(chunks):
            self._publish(chunk, more=index < len(chunks) - 1)
        self._messages += 1
        return True

    def send(
        self,
        payload: bytes | memoryview,
        *,
        timeout: float | None = None,
        interrupt: WriterInterrupt | None = None,
    ) -> None:
        """Publish a message, waiting for space (backpressure) up to ``timeout``.

        Raises RingTimeoutError when the deadline passes. If that, or an
        exception from ``interrupt``, happens after part of a chunked message
        was published, the ring is left mid-message and is marked broken.
        """
        self._check(payload)
        chunks = self._chunks_of(payload)
        deadline = _deadline(timeout)
        published = False

        def interrupt_slice() -> None:
            if interrupt is not None:
                interrupt(published)

        slots = self._memory.slots
        capacity = self._memory.capacity
        try:
            for index, chunk in enumerate(chunks):
                need = _WORD.size + len(chunk)
                while self._held == 0 or self._used + need > capacity:
                    if not _wait(slots, deadline, interrupt_slice):
                        raise RingTimeoutError(
                            f"no space in the ring for {timeout} s: the reader is not reading"
                        )
                    self._took_slot()
                self._publish(chunk, more=index < len(chunks) - 1)
                published = True
        except BaseException as exc:
            if published:
                self._broken = f"a message was left half-sent ({exc!r})"
            raise
        self._messages += 1

    def statistics(self) -> RingStatistics:
        return RingStatistics(messages=self._messages, chunks=self._chunks, bytes=self._bytes)


class RingReader:
    """The consuming end. Not thread-safe: one reader at a time (callers serialise)."""

    def __init__(self, memory: RingMemory, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self._memory = memory
        self._max_message_size = max_message_size
        self._offset = 0
        # Chunks of a message whose last chunk has not arrived yet. Kept across
        # calls, so a timed-out or interrupted receive loses nothing.
        self._parts: list[bytes] = []
        self._partial_size = 0
        self._broken: str | None = None
        self._messages = 0
        self._chunks = 0
        self._bytes = 0

    def _corrupt(self, message: str) -> ProtocolError:
        self._broken = message
        return ProtocolError(message)

    def receive(self, *, timeout: float | None = None, interrupt: ReaderInterrupt | None = None) -> bytes | None:
        """The next whole message, or None if none completed within ``timeout``.

        ``timeout=0`` polls; ``None`` waits without end (in slices, calling
        ``interrupt`` between them).
        """
        if self._broken is not None or self._memory.closed:
            raise BrokenRingError(self._broken or "ring is closed")
        memory = self._memory

        deadline = _deadline(timeout)
        while True:
            if not _wait(memory.frames, deadline, interrupt):
                return None
            (word,) = _WORD.unpack(memory.get(self._offset, _WORD.size))
            length = word & _LENGTH_MASK
            if length > memory.chunk_limit:
                raise self._corrupt(
                    f"corrupt chunk header at offset {self._offset}: length {length} "
                    f"exceeds the chunk limit {memory.chunk_limit}"
                )
            data = memory.get((self._offset + _WORD.size) % memory.capacity, length)
            self._offset = (self._offset + _WORD.size + length) % memory.capacity
            # Everything is copied out: hand the space back.
            memory.slots.release()
            self._chunks += 1
            self._bytes += length
            if word & _MORE or self._parts:
                self._parts.append(data)
                self._partial_size += length
                if self._partial_size > self._max_message_size:
                    raise self._corrupt(
                        f"chunked message exceeds the limit of {self._max_message_size} bytes"
                    )
                if word & _MORE:
                    continue
                data = b"".join(self._parts)
                self._parts.clear()
                self._partial_size = 0
            self._messages += 1
            return data

    def statistics(self) -> RingStatistics:
        return RingStatistics(messages=self._messages, chunks=self._chunks, bytes=self._bytes)
