"""What an API surface gives the API app: its routes, which of them generate, and the shape of its errors."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
from quart import Blueprint, request

from .._errors import ServerError
from ._common import ErrorBody, ServerState
from ._errors import openai_error

__all__ = ["Surface", "error_body_by_path"]


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
    # Paths at or under these are its own even where no route of it matches (a 404, a 405): their errors take its shape.
    path_prefixes: tuple[str, ...] = ()

    def owns(self, path: str) -> bool:
        return any(path == prefix or path.startswith(prefix + "/") for prefix in self.path_prefixes)


def error_body_by_path(surfaces: Sequence[Surface]) -> ErrorBody:
    """The app's error bodies: where no surface's route answered (no route matched, or not its method), in the
    shape of the surface that owns the path; OpenAI's elsewhere."""

    def body(error: ServerError) -> dict:
        path = request.path
        for surface in surfaces:
            if surface.owns(path):
                return surface.error_body(error)
        return openai_error(error)

    return body
