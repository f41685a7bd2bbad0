"""The base of every message on the rings."""

from __future__ import annotations

import msgspec


class _Message(msgspec.Struct, array_like=True, frozen=True, tag=True):
    pass
