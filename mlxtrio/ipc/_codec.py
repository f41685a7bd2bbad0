"""Typed messages on the wire: msgspec's MessagePack codec over a tagged union.

The IPC layer knows nothing about what the messages mean; the server defines
its own union of ``msgspec.Struct`` types (each with a ``tag``) and gets a codec
for it here. Decoding validates the type as it parses, so a corrupt or unknown
frame becomes one exception, ProtocolError, and never a half-built object.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

from ._errors import ProtocolError

__all__ = ["Codec"]

M = TypeVar("M")


class Codec(Generic[M]):
    """Encoder and decoder for one message type (usually a Union of tagged Structs)."""

    def __init__(self, message_type: Any) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder: msgspec.msgpack.Decoder[M] = msgspec.msgpack.Decoder(message_type)

    def encode(self, message: M) -> bytes:
        return self._encoder.encode(message)

    def decode(self, frame: bytes) -> M:
        try:
            return self._decoder.decode(frame)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            preview = bytes(frame[:32]).hex()
            raise ProtocolError(f"undecodable frame of {len(frame)} bytes ({exc}); starts {preview}") from exc
