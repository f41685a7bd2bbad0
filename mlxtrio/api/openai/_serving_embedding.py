"""POST /v1/embeddings: the request checked, its inputs to the model's worker, and its vectors as OpenAI's response.

The orchestrator never tokenizes: texts go to the worker as they are (the
body's size bounds them), token ids are checked for what can be known
without the model (integers, within int32, their count), and the worker
checks each input against the model's vocabulary and context.
"""

from __future__ import annotations

import functools

import msgspec
from quart import Response

from ..._errors import ErrorKind, ServerError
from .._common import RequestLimits, ServerState
from .._decode import decode_request
from .._durations import duration_seconds
from .._embedding import Embeddings, embed, written
from ._schemas import MAX_TOKEN_ID

__all__ = ["MAX_EMBEDDING_INPUTS", "MAX_EMBEDDING_TOKEN_IDS", "EmbeddingRequest", "embeddings"]

# OpenAI's limits: inputs in one request, and token ids in all of its inputs.
MAX_EMBEDDING_INPUTS = 2048
MAX_EMBEDDING_TOKEN_IDS = 300_000
_ENCODINGS = ("float", "base64")
_json = msgspec.json.Encoder()


def _input_error(message: str, param: str = "input") -> ServerError:
    return ServerError(
        ErrorKind.INVALID_REQUEST,
        f"input is a string, a list of strings, a list of token ids or a list of lists of them: {message}",
        param=param,
    )


def _token_ids(value: list, param: str) -> tuple[int, ...]:
    if not value:
        raise _input_error("a list of token ids must not be empty", param)
    # bool is an int to Python, not to JSON.
    if any(type(token) is not int or not 0 <= token <= MAX_TOKEN_ID for token in value):
        raise _input_error(f"token ids are integers within [0, {MAX_TOKEN_ID}]", param)
    return tuple(value)


class EmbeddingRequest(msgspec.Struct, kw_only=True):
    """POST /v1/embeddings. Unknown fields are ignored, as on the other endpoints."""

    model: str
    # A string, strings, token ids or lists of token ids (``inputs`` reads them).
    input: str | list[object]
    encoding_format: str = "float"
    dimensions: int | None = None
    user: str | None = None
    # Extension (Ollama's): how long the model stays loaded after this request.
    keep_alive: float | str | None = None

    def inputs(self) -> tuple[str | tuple[int, ...], ...]:
        """The inputs, texts or token ids; a 400 naming ``input`` (or the one input at fault) for anything else."""
        given = self.input
        if isinstance(given, str):
            given = [given]
        if not given:
            raise _input_error("the list must not be empty")
        # A flat list of ids is one input: its length is counted with the token ids, below.
        if len(given) > MAX_EMBEDDING_INPUTS and not all(type(each) is int for each in given):
            raise _input_error(f"at most {MAX_EMBEDDING_INPUTS} inputs, not {len(given)}")
        if all(isinstance(each, str) for each in given):
            empty = next((index for index, each in enumerate(given) if not each), None)
            if empty is not None:
                where = "input" if isinstance(self.input, str) else f"input[{empty}]"
                raise ServerError(ErrorKind.INVALID_REQUEST, f"{where} must not be an empty string", param=where)
            return tuple(given)  # type: ignore[arg-type]
        if all(isinstance(each, list) for each in given):
            lists: list[list] = given  # type: ignore[assignment]
        elif not any(isinstance(each, str | list) for each in given):
            lists = [given]
        else:
            raise _input_error("not a mixture")
        # Counted before any is read: the count is cheap, the reading is not.
        if sum(map(len, lists)) > MAX_EMBEDDING_TOKEN_IDS:
            raise _input_error(f"at most {MAX_EMBEDDING_TOKEN_IDS} token ids in all")
        flat = lists is not given
        return tuple(_token_ids(each, "input" if flat else f"input[{index}]") for index, each in enumerate(lists))

    def validate(self, limits: RequestLimits) -> None:
        if not self.model:
            raise ServerError(ErrorKind.INVALID_REQUEST, "model must not be empty", param="model")
        if self.encoding_format not in _ENCODINGS:
            raise ServerError(
                ErrorKind.INVALID_REQUEST, f"encoding_format is float or base64, not {self.encoding_format!r}", param="encoding_format"
            )
        if self.dimensions is not None and not 1 <= self.dimensions <= MAX_TOKEN_ID:
            raise ServerError(ErrorKind.INVALID_REQUEST, f"dimensions must be a positive integer, not {self.dimensions}", param="dimensions")
        # ``input`` is read (and checked) once, by the caller's ``inputs()``: up to 300,000 ids are not walked twice.
        self.keep_alive_seconds()

    def keep_alive_seconds(self) -> float | None:
        return duration_seconds(self.keep_alive, param="keep_alive")


async def embeddings(state: ServerState, body: bytes) -> Response:
    asked = decode_request(body, EmbeddingRequest, state.limits)
    inputs = asked.inputs()
    embeddings = await embed(state, asked.model, inputs, dimensions=asked.dimensions, keep_alive=asked.keep_alive_seconds())
    body = await written(embeddings, functools.partial(_answer, encoding=asked.encoding_format, model=asked.model))
    return Response(body, content_type="application/json")


def _answer(embeddings: Embeddings, *, encoding: str, model: str) -> bytes:
    """OpenAI's response: each input's vector as floats, or as base64 of float32 little-endian (what the SDKs decode)."""
    values = embeddings.base64_rows() if encoding == "base64" else embeddings.floats()
    rows = [{"object": "embedding", "index": index, "embedding": value} for index, value in enumerate(values)]
    tokens = embeddings.tokens
    return _json.encode({"object": "list", "data": rows, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
