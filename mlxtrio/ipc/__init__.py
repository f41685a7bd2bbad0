"""Shared-memory rings synchronised by POSIX semaphores, and their Trio side.

This package knows frames and semaphores, nothing about models or HTTP.
See docs/ARCHITECTURE.md for the ring layout and the semaphore protocol.
"""

from ._channel import Channel, ChannelSpec, parent_watch
from ._codec import Codec
from ._errors import (
    BrokenRingError,
    FrameTooLargeError,
    IPCError,
    PeerGoneError,
    ProtocolError,
    RingTimeoutError,
)
from ._names import MAX_NAME_LENGTH, NAME_PREFIX, SharedObject, list_objects, sweep_stale_objects
from ._ring import (
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_RING_CAPACITY,
    WAIT_SLICE,
    RingMemory,
    RingReader,
    RingSpec,
    RingStatistics,
    RingWriter,
)
from ._router import MessageRouter, RouterStatistics
from ._semaphore import HAS_TIMED_WAIT
from ._trio import TrioChannel, TrioChannelStatistics

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_RING_CAPACITY",
    "HAS_TIMED_WAIT",
    "MAX_NAME_LENGTH",
    "NAME_PREFIX",
    "WAIT_SLICE",
    "BrokenRingError",
    "Channel",
    "ChannelSpec",
    "Codec",
    "FrameTooLargeError",
    "IPCError",
    "MessageRouter",
    "PeerGoneError",
    "ProtocolError",
    "RingMemory",
    "RingReader",
    "RingSpec",
    "RingStatistics",
    "RingTimeoutError",
    "RingWriter",
    "RouterStatistics",
    "SharedObject",
    "TrioChannel",
    "TrioChannelStatistics",
    "list_objects",
    "parent_watch",
    "sweep_stale_objects",
]
