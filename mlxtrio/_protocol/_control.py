"""A worker's life and the messages that are not one kind of request's: start, health, cancel, failure, stop."""

from __future__ import annotations

import msgspec

from ._embedding import EmbeddingInfo
from ._kinds import ErrorKind
from ._message import _Message


class Cancel(_Message, tag="cancel"):
    """Drop a sequence (its client left, or it timed out). Unknown ids are ignored."""

    request_id: int


class Ping(_Message, tag="ping"):
    nonce: int


class Shutdown(_Message, tag="shutdown"):
    """Finish nothing, free everything, exit 0."""


class Hello(_Message, tag="hello"):
    """First message: the worker has attached (the orchestrator may unlink the names)."""

    pid: int


class RankInfo(msgspec.Struct, array_like=True, frozen=True):
    """One rank of a worker group, as it reported itself once loaded."""

    rank: int
    host: str
    pid: int
    # Bytes its MLX arrays held once loaded (its shard's weights).
    memory_bytes: int
    # Its shard: "layers 0-11 of 24" (pipeline) or "1/2 of every layer" (tensor).
    shard: str


class Ready(_Message, tag="ready"):
    model: str
    load_seconds: float
    # Bytes of weights resident for this model, as MLX reports them.
    memory_bytes: int
    # "batched" (continuous batching) or "sequential" (the fallback); "embed" for an embedding model's passes.
    engine: str = "batched"
    # The model's tool-call format (mlx-lm's parser: "json_tools", ...); None: no tool calling.
    tool_format: str | None = None
    # The CPUs the worker is pinned to; empty: not pinned.
    cpus: tuple[int, ...] = ()
    # The malloc it runs with, as its memory map shows: "system", "jemalloc", ...
    allocator: str = "system"
    # The BLAS its MLX runs float32 products with, as its memory map shows: "mlx", "openblas", ...
    blas: str = "mlx"
    # The scheduling policy of its threads: "batch" when pinned to one core (Linux), "normal", "unknown" (macOS), ...
    scheduling: str = "normal"
    # A worker group's ranks, rank 0 first (memory_bytes is then their sum); empty: one process.
    ranks: tuple[RankInfo, ...] = ()
    # What the model serves: "generate" (Generate) or "embed" (Embed); a request of the other kind is refused.
    task: str = "generate"
    # An embedding model's width, context and pooling; None for "generate".
    embedding: EmbeddingInfo | None = None


class LoadFailed(_Message, tag="load_failed"):
    """The model could not be loaded: why, as a kind and OpenAI's code (``model_not_found``, ``model_too_large`` ...)."""

    kind: ErrorKind
    message: str
    code: str


class RequestFailed(_Message, tag="request_failed"):
    """One sequence failed; the others go on."""

    request_id: int
    kind: ErrorKind
    message: str
    # The request's field at fault, and OpenAI's error code, where there are.
    param: str | None = None
    code: str | None = None


class Pong(_Message, tag="pong"):
    nonce: int
    active_sequences: int
    prompt_cache_bytes: int = 0
    # Bytes held by MLX arrays in the worker (weights, KV caches, the prompt cache), as MLX counts them.
    active_memory_bytes: int = 0
