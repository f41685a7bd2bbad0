"""What an API surface gives the API app: its routes, which of them generate, and the shape of its errors."""

from __future__ import annotations

from collections.abc import Callable

import attrs
from quart import Blueprint

from ._common import ErrorBody, ServerState

__all__ = ["Surface"]


@attrs.frozen(kw_only=True)
class Surface:
    """One API surface (a folder of ``mlxtrio/api``), as ``_app.SURFACES`` lists it."""

    name: str
    # Its routes, made for one server.
    routes: Callable[[ServerState], Blueprint]
    # The paths whose POSTs generate: each such request is in the server's intake until its Generate goes out.
    generation_paths: frozenset[str]
    # Its error bodies, for every error its routes answer with (a stream's error event is its Answer's).
    error_body: ErrorBody
