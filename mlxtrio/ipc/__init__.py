"""Shared-memory rings synchronised by POSIX semaphores, and their Trio side.

This package knows frames and semaphores, nothing about models or HTTP.
See docs/ARCHITECTURE.md for the ring layout and the semaphore protocol.
The Trio side (``TrioChannel``, ``MessageRouter``) loads on first use: the
worker, plain synchronous Python, uses the rest without importing Trio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
from ._ring import RingReader, RingStatistics, RingWriter
from ._ring_memory import RingMemory, RingSpec

if TYPE_CHECKING:
    from ._router import MessageRouter, RouterStatistics
    from ._trio import TrioChannel, TrioChannelStatistics

__all__ = [
    "MAX_NAME_LENGTH",
    "NAME_PREFIX",
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

# The Trio side, by module.
_LAZY = {"TrioChannel": "_trio", "TrioChannelStatistics": "_trio", "MessageRouter": "_router", "RouterStatistics": "_router"}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is not None:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
