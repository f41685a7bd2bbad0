"""POST /api/embed and the older /api/embeddings: Ollama's embeddings, on the same core as OpenAI's /v1/embeddings.

``/api/embed`` takes a string or a list of strings and answers every vector
with Ollama's counts and durations; ``truncate`` (Ollama's default: true)
cuts an input over the model's context instead of refusing it.
``/api/embeddings`` takes one ``prompt`` and answers one ``embedding``. An
empty input loads the model (or unloads it with ``keep_alive`` 0) and
answers no vectors, as Ollama's does.
"""

from __future__ import annotations

import time

import msgspec
from quart import Response

from .._common import RequestLimits, ServerState, json_response
from .._decode import decode_request
from .._durations import duration_seconds
from .._embedding import Embeddings, embed, written
from .._observe import current_record
from ..openai._schemas import MAX_TOKEN_ID
from ..openai._serving_embedding import MAX_EMBEDDING_INPUTS
from ._answer import request_durations
from ._schemas import invalid
from ._serving import load_or_unload, resolved

__all__ = ["embed_route", "legacy_embeddings_route"]

_json = msgspec.json.Encoder()


class _EmbedBody(msgspec.Struct, kw_only=True):
    model: str
    keep_alive: float | str | None = None
    # Ollama's runner options (num_ctx, num_thread ...): nothing of them applies to an embedding here.
    options: dict[str, object] | None = None

    def keep_alive_seconds(self) -> float | None:
        return duration_seconds(self.keep_alive, param="keep_alive")


class EmbedRequest(_EmbedBody, kw_only=True):
    """POST /api/embed."""

    input: str | list[str] = ""
    truncate: bool = True
    dimensions: int | None = None

    def inputs(self) -> tuple[str, ...]:
        given = [self.input] if isinstance(self.input, str) else self.input
        if len(given) > MAX_EMBEDDING_INPUTS:
            raise invalid("input", f"input has at most {MAX_EMBEDDING_INPUTS} strings, not {len(given)}")
        # A lone empty string is no input (Ollama's answer is then empty); an empty string in a list is the worker's 400.
        return tuple(given) if given != [""] else ()

    def validate(self, limits: RequestLimits) -> None:
        if not self.model:
            raise invalid("model", "model is required")
        if self.dimensions is not None and not 1 <= self.dimensions <= MAX_TOKEN_ID:
            raise invalid("dimensions", f"dimensions must be a positive integer, not {self.dimensions}")
        self.inputs()
        self.keep_alive_seconds()


class LegacyEmbeddingRequest(_EmbedBody, kw_only=True):
    """POST /api/embeddings (Ollama's older endpoint)."""

    prompt: str = ""

    def validate(self, limits: RequestLimits) -> None:
        if not self.model:
            raise invalid("model", "model is required")
        self.keep_alive_seconds()


async def embed_route(state: ServerState, body: bytes) -> Response:
    asked = decode_request(body, EmbedRequest, state.limits)
    model = resolved(state, asked.model).id
    inputs = asked.inputs()
    if not inputs:
        # Nothing to embed: the model loaded (or unloaded with keep_alive 0), as Ollama's empty request does.
        await load_or_unload(state, model, asked.keep_alive_seconds(), task="embed")
        return json_response({"model": asked.model, "embeddings": []})
    embeddings = await embed(
        state, model, inputs, dimensions=asked.dimensions, truncate=asked.truncate, keep_alive=asked.keep_alive_seconds()
    )
    record = current_record()

    def write(embeddings: Embeddings) -> bytes:
        return _json.encode({
            "model": asked.model,
            "embeddings": embeddings.floats(),
            **request_durations(record, time.perf_counter()),
            "prompt_eval_count": embeddings.tokens,
        })

    return Response(await written(embeddings, write), content_type="application/json")


async def legacy_embeddings_route(state: ServerState, body: bytes) -> Response:
    asked = decode_request(body, LegacyEmbeddingRequest, state.limits)
    model = resolved(state, asked.model).id
    if not asked.prompt:
        await load_or_unload(state, model, asked.keep_alive_seconds(), task="embed")
        return json_response({"embedding": []})
    # Ollama's older endpoint cuts a long prompt to the context, as /api/embed does by default.
    embeddings = await embed(state, model, (asked.prompt,), truncate=True, keep_alive=asked.keep_alive_seconds(), param="prompt")
    return json_response({"embedding": embeddings.floats()[0]})
