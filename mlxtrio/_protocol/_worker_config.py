"""What a worker is started with."""

from __future__ import annotations

import msgspec

from ._embedding import EmbeddingSettings


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
    # "generate", "embed", or "auto": the worker decides from the model's files (an encoder, or sentence-transformers
    # files, is an embedding model) and says which in ``Ready.task``.
    task: str
    # How an embedding model pools and normalises (used only when the task is, or turns out to be, "embed").
    embedding: EmbeddingSettings
    # A model served by a group of ranks over mlx.distributed (worker/_group/); None: one process.
    group: GroupConfig | None = None
