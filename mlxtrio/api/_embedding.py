"""The embedding core every surface's embeddings endpoint calls (OpenAI's /v1/embeddings, Ollama's /api/embed).

A surface reads its request into inputs (texts or token ids, checked only
for what can be known without the model); this finds the model, loads it by
the request's deadline (the record keeps the wait: Ollama's
``load_duration``), and has its worker embed them. The vectors come back as
the worker sent them, float32 rows, for each surface to write in its shape.
"""

from __future__ import annotations

import base64
import sys
from array import array
from collections.abc import Callable

import attrs
import trio

from .. import _protocol as p
from .._errors import ErrorKind, ServerError
from ._common import ServerState
from ._generation import ensure_ready_by, served_model, timed_out
from ._observe import current_record

__all__ = ["Embeddings", "embed", "written"]

# Vectors up to this many bytes are written in the event loop (a fraction of a millisecond); larger, in a thread.
_INLINE_BYTES = 256 * 1024


@attrs.frozen
class Embeddings:
    """A request's vectors, one float32 row per input, in order."""

    embedded: p.Embedded
    count: int

    @property
    def tokens(self) -> int:
        return sum(self.embedded.token_counts)

    def _row_bytes(self) -> int:
        width, vectors = self.embedded.dimensions, self.embedded.vectors
        if width < 1 or len(vectors) != 4 * width * self.count:
            raise ServerError(ErrorKind.INTERNAL, f"the worker sent {len(vectors)} bytes of vectors for {self.count} inputs of {width} dimensions")
        return 4 * width

    def floats(self) -> list[list[float]]:
        width = self._row_bytes() // 4
        values = array("f", self.embedded.vectors)
        if sys.byteorder == "big":
            values.byteswap()
        return [values[start : start + width].tolist() for start in range(0, len(values), width)]

    def base64_rows(self) -> list[str]:
        """Each row as base64 of float32 little-endian: what the OpenAI SDKs decode."""
        size, vectors = self._row_bytes(), self.embedded.vectors
        return [base64.b64encode(vectors[start : start + size]).decode("ascii") for start in range(0, len(vectors), size)]


async def embed(
    state: ServerState, model: str, inputs: tuple[str | tuple[int, ...], ...], *, dimensions: int | None = None,
    truncate: bool = False, keep_alive: float | None = None, param: str = "input",
) -> Embeddings:
    """``inputs``' vectors from ``model``'s worker; a 504 past the request timeout, the worker's refusal as a ServerError."""
    served = await served_model(state, model)
    timeout = state.config.request_timeout
    deadline = trio.current_time() + timeout
    # Refused before a load where the model's task is known without one (the built-ins, a configured task).
    served.check_task("embed")
    await ensure_ready_by(served, deadline, timeout)
    with trio.move_on_at(deadline) as scope:
        embedded = await served.embed(inputs, dimensions=dimensions, truncate=truncate, keep_alive=keep_alive, param=param)
    if scope.cancelled_caught:
        raise timed_out(timeout)
    embeddings = Embeddings(embedded, len(inputs))
    current_record().on_embedded(embeddings.tokens)
    return embeddings


async def written(embeddings: Embeddings, write: Callable[[Embeddings], bytes]) -> bytes:
    """``write(embeddings)``, a surface's response body: millions of floats for a large request are written off the
    event loop, which serves every other request meanwhile."""
    if len(embeddings.embedded.vectors) <= _INLINE_BYTES:
        return write(embeddings)
    return await trio.to_thread.run_sync(write, embeddings)
