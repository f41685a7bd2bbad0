"""One ring's shared memory: its layout, its two semaphores, and how each process opens them.

Layout of the shared-memory object::

    offset 0   header (64 bytes): magic "MXTR", version, capacity, slots, chunk limit
    offset 64  data area of ``capacity`` bytes, used circularly

The creator writes the header; the process that attaches checks it against
the spec it was given, so the two can never disagree about the geometry.
``put`` and ``get`` copy bytes in and out of the data area, wrapping around
its end at any offset. What the bytes mean (chunks and their words) and how
the semaphores are used is the reader's and writer's business (``_ring.py``).
Both semaphore values stay below ``slots`` <= 32767, macOS's SEM_VALUE_MAX.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable

import attrs
import msgspec
import posix_ipc

from ._errors import ProtocolError

__all__ = ["DEFAULT_RING_CAPACITY", "RingMemory", "RingSpec"]

_MAGIC = b"MXTR"
_VERSION = 1
_HEADER = struct.Struct("<4sHHQII")  # magic, version, reserved, capacity, slots, chunk limit
_HEADER_SIZE = 64
_MAX_SLOTS = 32767  # SEM_VALUE_MAX on macOS

DEFAULT_RING_CAPACITY = 4 * 1024 * 1024


class RingSpec(msgspec.Struct, frozen=True):
    """Everything the other process needs to attach to one ring."""

    memory_name: str
    frames_name: str
    slots_name: str
    capacity: int
    slots: int


def _slots(capacity: int) -> int:
    """The most chunks a ring may hold: one per 64 bytes, within what a semaphore may count."""
    return max(16, min(_MAX_SLOTS, capacity // 64))


def _chunk_limit(capacity: int) -> int:
    """A message longer than this (a quarter of the ring) goes in chunks, so writer and reader overlap."""
    return max(1, capacity // 4)


@attrs.define(eq=False)
class RingMemory:
    """One ring's mapped memory and its two semaphores, as seen by one process."""

    spec: RingSpec
    _map: mmap.mmap
    frames: posix_ipc.Semaphore
    slots: posix_ipc.Semaphore
    chunk_limit: int
    closed: bool = False

    @classmethod
    def create(cls, base_name: str, *, capacity: int = DEFAULT_RING_CAPACITY) -> RingMemory:
        """Create the objects exclusively, owner-only (0600)."""
        if capacity < 64:
            raise ValueError(f"ring capacity must be at least 64 bytes, not {capacity}")
        slots = _slots(capacity)
        spec = RingSpec(
            memory_name=base_name + "m",
            frames_name=base_name + "f",
            slots_name=base_name + "s",
            capacity=capacity,
            slots=slots,
        )
        created: list[tuple[Callable[[str], None], str]] = []
        try:
            memory = posix_ipc.SharedMemory(
                spec.memory_name, posix_ipc.O_CREX, mode=0o600, size=_HEADER_SIZE + capacity
            )
            created.append((posix_ipc.unlink_shared_memory, spec.memory_name))
            try:
                mapped = mmap.mmap(memory.fd, memory.size)
            finally:
                memory.close_fd()
            chunk_limit = _chunk_limit(capacity)
            mapped[:_HEADER.size] = _HEADER.pack(_MAGIC, _VERSION, 0, capacity, slots, chunk_limit)
            frames = posix_ipc.Semaphore(spec.frames_name, posix_ipc.O_CREX, mode=0o600, initial_value=0)
            created.append((posix_ipc.unlink_semaphore, spec.frames_name))
            slots_sem = posix_ipc.Semaphore(spec.slots_name, posix_ipc.O_CREX, mode=0o600, initial_value=slots)
            created.append((posix_ipc.unlink_semaphore, spec.slots_name))
        except BaseException:
            for unlink, name in created:
                _unlink_quietly(unlink, name)
            raise
        return cls(spec, mapped, frames, slots_sem, chunk_limit)

    @classmethod
    def attach(cls, spec: RingSpec) -> RingMemory:
        """Open objects another process created, and check they are what the spec says."""
        memory = posix_ipc.SharedMemory(spec.memory_name)
        try:
            mapped = mmap.mmap(memory.fd, memory.size)
        finally:
            memory.close_fd()
        try:
            magic, version, _, capacity, slots, chunk_limit = _HEADER.unpack_from(mapped, 0)
            if (magic, version, capacity, slots) != (_MAGIC, _VERSION, spec.capacity, spec.slots):
                raise ProtocolError(
                    f"ring {spec.memory_name} has header {(magic, version, capacity, slots)!r}, "
                    f"expected {(_MAGIC, _VERSION, spec.capacity, spec.slots)!r}"
                )
            frames = posix_ipc.Semaphore(spec.frames_name)
            slots_sem = posix_ipc.Semaphore(spec.slots_name)
        except BaseException:
            mapped.close()
            raise
        return cls(spec, mapped, frames, slots_sem, chunk_limit)

    @property
    def capacity(self) -> int:
        return self.spec.capacity

    def put(self, offset: int, data: bytes | memoryview) -> int:
        """Copy ``data`` in at data offset ``offset``, wrapping; returns the next offset."""
        capacity = self.spec.capacity
        size = len(data)
        first = min(size, capacity - offset)
        start = _HEADER_SIZE + offset
        self._map[start : start + first] = data[:first] if first < size else data
        if first < size:
            self._map[_HEADER_SIZE : _HEADER_SIZE + size - first] = data[first:]
        return (offset + size) % capacity

    def get(self, offset: int, size: int) -> bytes:
        """Copy ``size`` bytes out from data offset ``offset``, wrapping."""
        capacity = self.spec.capacity
        first = min(size, capacity - offset)
        start = _HEADER_SIZE + offset
        data = self._map[start : start + first]
        if first < size:
            data += self._map[_HEADER_SIZE : _HEADER_SIZE + size - first]
        return data

    def unlink(self) -> None:
        """Remove the names; the objects live on until every process has closed them."""
        _unlink_quietly(posix_ipc.unlink_shared_memory, self.spec.memory_name)
        _unlink_quietly(posix_ipc.unlink_semaphore, self.spec.frames_name)
        _unlink_quietly(posix_ipc.unlink_semaphore, self.spec.slots_name)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.frames.close()
        self.slots.close()
        self._map.close()


def _unlink_quietly(unlink: Callable[[str], None], name: str) -> None:
    try:
        unlink(name)
    except posix_ipc.ExistentialError:
        pass
