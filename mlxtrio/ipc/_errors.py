"""Exceptions raised by the IPC layer.

They are few and specific on purpose: the orchestrator turns every one of them
into the same action (drop the worker, fail its requests, start a fresh one),
but a reader of a log should see at once *why* the channel broke.
"""

from __future__ import annotations

__all__ = [
    "BrokenRingError",
    "FrameTooLargeError",
    "IPCError",
    "PeerGoneError",
    "ProtocolError",
    "RingTimeoutError",
]


class IPCError(Exception):
    """Base class of every error this package raises."""


class ProtocolError(IPCError):
    """A frame was corrupt, truncated or of an unknown type.

    The ring cannot be trusted after this: the only safe reaction is to tear
    the channel down (the server restarts the worker).
    """


class FrameTooLargeError(IPCError, ValueError):
    """A message exceeds the configured maximum message size."""


class RingTimeoutError(IPCError, TimeoutError):
    """A writer waited past its deadline for space (the reader is not reading)."""


class PeerGoneError(IPCError):
    """The process on the other side of the ring is gone."""


class BrokenRingError(IPCError):
    """The ring was closed locally, or left mid-message, and can no longer be used."""
