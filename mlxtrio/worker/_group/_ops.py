"""What rank 0 tells the other ranks, in order: the engine calls they make after it, and the end.

Every rank runs the same engine on the same calls, so every rank's batch
holds the same sequences at every step and their collectives (the model's
sends, receives and gathers, and the sampled tokens' broadcast) pair up.
"""

from __future__ import annotations

import msgspec

from ..._protocol import Generate, Grammar

__all__ = ["OPS", "Admit", "Cancel", "CancelAll", "Compile", "Hello", "Op", "Step", "Stop"]


class Hello(msgspec.Struct, tag="hello", frozen=True):
    """A follower's first frame on its control link: its rank and the group's token (rank 0 checks both)."""

    rank: int
    token: str


class Compile(msgspec.Struct, tag="compile", frozen=True):
    """Rank 0 started compiling this grammar: compile it too, off the loop, for an Admit to come."""

    grammar: Grammar


class Admit(msgspec.Struct, tag="admit", frozen=True):
    request: Generate


class Cancel(msgspec.Struct, tag="cancel", frozen=True):
    request_id: int


class CancelAll(msgspec.Struct, tag="cancel_all", frozen=True):
    pass


class Step(msgspec.Struct, tag="step", frozen=True):
    """One engine step, then its settle; ``active``: rank 0's sequences before it, which every rank must have too."""

    active: int


class Stop(msgspec.Struct, tag="stop", frozen=True):
    """The group stops: drain, meet once more, exit."""


Op = Hello | Compile | Admit | Cancel | CancelAll | Step | Stop


class _Codec:
    def __init__(self) -> None:
        self.encode = msgspec.msgpack.Encoder().encode
        self.decode = msgspec.msgpack.Decoder(Op).decode


OPS = _Codec()
