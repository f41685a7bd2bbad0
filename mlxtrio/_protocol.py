"""Messages between the orchestrator and a worker: the narrow interface between the two rooms.

Both sides import this module and nothing of each other. The orchestrator
never imports MLX; the worker never imports Trio or HTTP. Every message is a
tagged msgspec Struct encoded as MessagePack arrays (``array_like``): compact,
and validated as it is decoded (``mlxtrio.ipc.Codec``).
"""

from __future__ import annotations

import enum

import msgspec

from .ipc import Codec

__all__ = [
    "Admitted",
    "Cancel",
    "ChatMessage",
    "ContentPart",
    "Delta",
    "ErrorKind",
    "Generate",
    "Grammar",
    "Hello",
    "ImageInput",
    "LOW_DETAIL_PIXELS",
    "LoadFailed",
    "Ping",
    "Pong",
    "Ready",
    "RequestFailed",
    "SamplingParams",
    "Shutdown",
    "Step",
    "TokenLogprob",
    "WorkerConfig",
    "WorkerExit",
    "TO_ORCHESTRATOR",
    "TO_WORKER",
    "ToOrchestrator",
    "ToWorker",
]


class ErrorKind(str, enum.Enum):
    """What went wrong, in the server's own words: the one list of failures a client can be told of.

    The worker sends kinds in ``RequestFailed`` and ``LoadFailed``; the orchestrator and
    the API layer raise any of them as ``ServerError``. Nothing but the API
    layer knows HTTP: it alone turns a kind into a status and a surface's
    error type (api/_errors.py), so the worker and the orchestrator stay the
    same whichever protocol a client speaks.
    """

    # The request cannot be served as sent (a prompt over the context, a template that rejects it, a grammar ...).
    INVALID_REQUEST = "invalid_request"
    # Generation failed, through no fault of the request.
    INTERNAL = "internal"
    # Generation, or loading the model, needs more memory than there is.
    OUT_OF_MEMORY = "out_of_memory"
    # No such model, or no such endpoint.
    NOT_FOUND = "not_found"
    # The model cannot serve now (stopped, crashed, unloading, the server stopping); trying again may work.
    UNAVAILABLE = "unavailable"
    # The model did not answer in time.
    TIMEOUT = "timeout"
    # Too many requests are waiting for the model.
    OVERLOADED = "overloaded"
    # What the HTTP side refuses before a request is read.
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    MISDIRECTED = "misdirected"
    TOO_LARGE = "too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    BODY_TIMEOUT = "body_timeout"
    METHOD_NOT_ALLOWED = "method_not_allowed"


class WorkerExit(enum.IntEnum):
    """A worker's exit status, and so why it stopped (the orchestrator words each for its log and its requests)."""

    OK = 0
    # The model could not be loaded (a LoadFailed was sent first where the channel still worked).
    LOAD_FAILED = 3
    # The channel to the orchestrator broke.
    CHANNEL_BROKEN = 4
    # Generation failed repeatedly with no good step between: a state no request can fix.
    GENERATION_BROKEN = 5
    # A message arrived that the worker could not read.
    PROTOCOL_ERROR = 6
    # A rank of a worker group failed or went away: the group ends as one.
    GROUP_BROKEN = 7


class _Message(msgspec.Struct, array_like=True, frozen=True, tag=True):
    pass


class GroupConfig(msgspec.Struct, frozen=True, kw_only=True):
    """A worker group: one model over several ranks through mlx.distributed (issue 27).

    Rank 0 is the worker on the channel; the other ranks are started with
    ``python -m mlxtrio.worker --rank R <WorkerConfig JSON>`` and follow it
    step by step (worker/_group/). The orchestrator allocates the ports.
    """

    # Each rank's host, an IP address; rank 0's first.
    hosts: tuple[str, ...]
    # "pipeline" (each rank holds a run of layers) or "tensor" (each holds a slice of every layer).
    parallel: str
    # mlx.distributed's backend: "ring" (TCP), "jaccl" (RDMA over Thunderbolt 5) or "nccl" (CUDA).
    backend: str
    # The ring's port for each rank (ring); the coordinator's port is ports[0] (jaccl, nccl).
    ports: tuple[int, ...]
    # Where rank 0 listens (on hosts[0]) for the other ranks' control links.
    control_port: int
    # jaccl: the RDMA device (or devices, one per cable) from each host to each other, None where there is no cable
    # (and to itself), as ``mlx.distributed_config`` writes it.
    rdma: tuple[tuple[str | tuple[str, ...] | None, ...], ...] = ()


# The environment variable that hands a local rank its group's token (a rank over ssh reads it from its stdin):
# a secret made for each start of a group, shown to rank 0 before it sends a rank anything (worker/_group/_link.py).
GROUP_TOKEN_VARIABLE = "MLXTRIO_GROUP_TOKEN"


class WorkerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What a worker is started with (JSON on its command line, beside the channel spec).

    The orchestrator has already decided that this model may be loaded: a
    request never names a filesystem path the worker opens. Every field is
    required: the orchestrator's settings (``_config.Config``) hold the
    defaults, and the catalog fills each field from them.
    """

    model_id: str
    # "demo" (built into cache_dir), "local" (a directory) or "hub" (a Hugging Face repo id).
    source: str
    location: str
    cache_dir: str
    memory_budget_bytes: int
    # Prompt tokens per prefill chunk.
    prefill_step_size: int
    # Sequences decoded together; 1 means no batching (the sequential path).
    decode_concurrency: int
    # Prompts prefilled together.
    prefill_batch_size: int
    # Prefill lengths rounded up to multiples of this (0: off).
    prefill_bucket: int
    # Byte cap of the prompt (KV) cache kept across requests; 0 turns it off.
    prompt_cache_bytes: int
    # A Jinja chat template to use instead of the tokenizer's (the config file's, per model); None: the tokenizer's.
    chat_template: str | None
    # CPUs to pin the worker to (empty: none), and whether only when MLX runs on the CPU. The latter is
    # MLX_WORKER_CPUS=auto: ``cpus`` is then the preferred core, passed over if another mlxtrio worker holds it.
    cpus: tuple[int, ...]
    cpus_for_cpu_backend_only: bool
    # Larger images are resized (their aspect kept) to at most this many pixels before the model sees them.
    image_max_pixels: int
    # A BLAS library to load before MLX, as the orchestrator resolved MLX_WORKER_BLAS; None: MLX's own (see tuning/_blas.py).
    blas_library: str | None
    # Seconds a request's grammar may take to compile (worker/_grammar.py); past it, the request fails as invalid_request (grammar_timeout).
    grammar_compile_timeout: float
    # A model served by a group of ranks over mlx.distributed (worker/_group/); None: one process.
    group: GroupConfig | None = None


# --- orchestrator -> worker ----------------------------------------------------


class ToolCall(msgspec.Struct, array_like=True, frozen=True):
    """A function call: its name and its arguments as JSON text (OpenAI's shape)."""

    name: str
    arguments: str
    # The id the client was given for it (earlier turns); "" where none was.
    id: str = ""


class ImageInput(msgspec.Struct, array_like=True, frozen=True):
    """An image of a request, as sent: its bytes are decoded in the worker only (worker/_vision/)."""

    # The encoded image (PNG, JPEG, WebP or GIF), as the client sent it or the fetcher got it.
    data: bytes
    # The request's field it came from (``messages[0].content[1]``), for an error that names it.
    where: str
    # OpenAI's ``detail``: "low" holds the image to LOW_DETAIL_PIXELS; "auto" and "high" to the server's image_max_pixels.
    detail: str = "auto"


# Pixels an image sent with detail "low" is resized to at most, as OpenAI's low detail (512 x 512).
LOW_DETAIL_PIXELS = 512 * 512


class ContentPart(msgspec.Struct, array_like=True, frozen=True):
    """A part of a message's content, in order: text, or an image (an index into ``Generate.images``)."""

    text: str = ""
    # -1: a text part.
    image: int = -1


class ChatMessage(msgspec.Struct, array_like=True, frozen=True):
    role: str
    # The message's text; with ``parts``, its text parts joined.
    content: str
    # An assistant turn's calls, and the call a tool message answers.
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    # An assistant turn's thinking, given to the template as ``reasoning_content`` when not empty.
    reasoning: str = ""
    # A message with images: its content as parts in order, text and images (empty: ``content`` alone).
    parts: tuple[ContentPart, ...] = ()


class Grammar(msgspec.Struct, array_like=True, frozen=True):
    """What a sequence's output must match. The worker compiles it (worker/_grammar.py), never the orchestrator.

    ``syntax`` is "json_schema" (``text`` is a JSON schema: the output is a
    JSON document valid against it), "json_tool_call" (``text`` is a call's
    JSON schema: the output is one call in the json_tools syntax,
    ``<tool_call>`` JSON ``</tool_call>``) or "regex".
    """

    syntax: str
    text: str
    # The request's field it came from, for an error that names it.
    param: str = "response_format"


class SamplingParams(msgspec.Struct, array_like=True, frozen=True):
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # Generate exactly max_tokens, ignoring end-of-sequence (vLLM's extension; benchmarks use it).
    ignore_eos: bool = False
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # (token id, bias) pairs.
    logit_bias: tuple[tuple[int, float], ...] = ()
    # Report each generated token's log probability, and this many alternatives.
    logprobs: bool = False
    top_logprobs: int = 0
    # What the output must match (response_format, a required tool call); None: free text.
    grammar: Grammar | None = None
    # The request named no max_tokens: max_tokens is the server's cap (MLX_MAX_TOKENS), and the worker
    # lowers it to what the context leaves after the prompt, as vLLM does.
    fit_context: bool = False
    # A completion's first delta starts with its prompt's text (``Delta.echoed``), and, with logprobs,
    # the prompt tokens' log probabilities (the first's None).
    echo: bool = False


class Generate(_Message, tag="generate"):
    """Start a request's sequences, one per choice. Exactly one of ``messages`` (chat) and ``prompt`` (completion)."""

    request_id: int
    params: SamplingParams
    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None
    # The request's tools (OpenAI's list, as JSON text) for the chat template,
    # and whether to turn the model's tool-call syntax into ToolCalls.
    tools: str | None = None
    parse_tool_calls: bool = False
    # parallel_tool_calls false: the sequence ends at its first call (0: no limit).
    max_tool_calls: int = 0
    # How many more Generates the orchestrator expects soon for this worker:
    # this request's other choices, and the requests it is still taking in
    # that are for this model or whose bodies it has not read. A hint: an
    # idle worker waits for them briefly before a batch's first step (orchestrator/_intake.py).
    followers: int = 0
    # The request's n: its choices are sequences request_id, request_id + 1, ..., sampling with
    # seed, seed + 1, ... where there is a seed. They share one Generate, so one tokenization.
    choices: int = 1
    # In place of ``prompt``: a completion's several prompts, or its token ids. The choices are split
    # evenly among them in order: with k each, prompt i's are sequences request_id + i * k onwards.
    prompts: tuple[str | tuple[int, ...], ...] = ()
    # The chat template's thinking switch (``enable_thinking``); None: the template's default.
    thinking: bool | None = None
    # Only count the prompt's tokens: Admitted, then one last Delta (finish_reason "counted"); nothing is generated.
    count_only: bool = False
    # Split the model's thinking into ``Delta.reasoning`` (False: it stays in the text, markers and all,
    # for a surface whose wire has no place for it).
    split_reasoning: bool = True
    # The images ``messages``' parts name, in order of appearance; only a vision model takes them.
    images: tuple[ImageInput, ...] = ()


class Cancel(_Message, tag="cancel"):
    """Drop a sequence (its client left, or it timed out). Unknown ids are ignored."""

    request_id: int


class Ping(_Message, tag="ping"):
    nonce: int


class Shutdown(_Message, tag="shutdown"):
    """Finish nothing, free everything, exit 0."""


ToWorker = Generate | Cancel | Ping | Shutdown


# --- worker -> orchestrator ----------------------------------------------------


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
    # "batched" (continuous batching) or "sequential" (the fallback).
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


class LoadFailed(_Message, tag="load_failed"):
    """The model could not be loaded: why, as a kind and OpenAI's code (``model_not_found``, ``model_too_large`` ...)."""

    kind: ErrorKind
    message: str
    code: str


class TokenLogprob(msgspec.Struct, array_like=True, frozen=True):
    """One token's log probability, and the most likely alternatives at that step (with no alternatives of their own)."""

    # The token's text: U+FFFD where it holds part of a character, which ``token_bytes`` holds whole.
    token: str
    # None for an echoed prompt's first token, which nothing predicts.
    logprob: float | None
    top: tuple[TokenLogprob, ...] = ()
    # The token's own bytes: joined, a sequence's rebuild its text's UTF-8.
    token_bytes: bytes = b""
    id: int = 0


class Delta(msgspec.Struct, array_like=True, frozen=True):
    """What one sequence produced in one step."""

    request_id: int
    text: str
    # Totals so far, so the last delta carries the usage.
    prompt_tokens: int
    completion_tokens: int
    # None while the sequence goes on; "stop" or "length" on its last delta ("counted" for a count_only Generate).
    finish_reason: str | None = None
    # Prompt tokens whose KV cache came from the prompt cache.
    cached_tokens: int = 0
    # For the tokens this delta covers, when the request asked for them.
    logprobs: tuple[TokenLogprob, ...] = ()
    # Calls completed in this delta (their text is not in ``text``).
    tool_calls: tuple[ToolCall, ...] = ()
    # On a last delta: the sequence failed after all (its grammar failed midway); the request gets this
    # error, an invalid_request naming the request's field ``error_param`` (code grammar_failed).
    error: str | None = None
    error_param: str | None = None
    # On an echoing sequence's first delta: how many characters of ``text`` are the prompt's (the
    # rest is generated); its logprobs then start with the prompt's ``prompt_tokens``.
    echoed: int = 0
    # The model's thinking released in this step, split from ``text`` by the tokenizer's think markers.
    reasoning: str = ""
    # On a last delta ending in "stop": the stop string that ended the sequence; None when anything else did.
    stop_string: str | None = None
    # Of completion_tokens so far, those that were the model's thinking (0 where it is not split out).
    reasoning_tokens: int = 0


class Step(_Message, tag="step"):
    """One decode step's output for every sequence that produced something: one frame per step."""

    deltas: tuple[Delta, ...]


class Admitted(_Message, tag="admitted"):
    """Requests the engine took in: their prompts fit and every check that comes before a first token passed.

    A stream's 200 waits for it (what it refuses is an ordinary error
    response), and goes out with it, before the prefill's first token.
    """

    request_ids: tuple[int, ...]
    # Each one's prompt tokens (of its first sequence's prompt), as its usage will count them: a stream's
    # opening can tell the prompt's size before any token (Anthropic's message_start).
    prompt_tokens: tuple[int, ...] = ()


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


ToOrchestrator = Hello | Ready | LoadFailed | Admitted | Step | RequestFailed | Pong

TO_WORKER: Codec[ToWorker] = Codec(ToWorker)
TO_ORCHESTRATOR: Codec[ToOrchestrator] = Codec(ToOrchestrator)
