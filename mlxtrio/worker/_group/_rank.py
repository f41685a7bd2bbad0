"""One rank's part in forming a group: join mlx.distributed, load its shard, build its engine, meet the others.

Every rank builds the same engine with the same settings, so that the same
calls (from rank 0, ``_leader.py``) make the same batches on every rank.
Two settings are made alike here rather than taken from this process:
- the prompt cache's byte bound, scaled to the layers this rank holds: a
  pipeline stage's caches hold only its layers' keys and values, and every
  rank must evict the same entries at the same moment (with alike layers,
  ``held * x > bound * held // total`` exactly when ``total * x > bound``);
- first tokens are read a step late on every rank (no rank is pinned to one core).
A failed step fails the group at once (``FailurePolicy.fail_at_first``):
the engine's own recovery, a fresh batch and a retry, would run on one rank
and not the others.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import msgspec

from ... import _protocol as p
from .._model_source import LoadError
from ._join import join
from ._share import TokenShare

__all__ = ["Member", "form", "group_engine", "meet"]


@attrs.frozen
class Member:
    """This process as a rank: mlx.distributed's group, its rank, and its shard (``_mlx_lm.Shard``)."""

    world: Any
    rank: int
    shard: Any


def form(config: p.WorkerConfig, rank: int, path: Path) -> Member:
    """Join the group and load this rank's shard; LoadError (invalid_request) for a model that cannot be split so."""
    from .._mlx_lm import load_shard, set_chat_template, speed_up_quantized
    from ..._models import takes_images

    group = config.group
    assert group is not None
    if takes_images(path):
        raise LoadError("a vision model cannot be served by a worker group", kind=p.ErrorKind.INVALID_REQUEST, code="group_unsupported")
    world = join(group, rank)
    try:
        shard = load_shard(path, world, group.parallel)
    except ValueError as exc:
        raise LoadError(str(exc), kind=p.ErrorKind.INVALID_REQUEST, code="group_unsupported") from exc
    if group.parallel == "pipeline":
        # Tensor parallelism's layers are mlx's sharded ones, which the fold does not know.
        speed_up_quantized(shard.model)
    if config.chat_template is not None:
        set_chat_template(shard.tokenizer, config.chat_template)
    return Member(world, rank, shard)


def group_engine(member: Member, config: p.WorkerConfig, *, progress: Callable[[], None]):  # noqa: ANN201 - an Engine
    from .._engine import make_engine

    shard = member.shard
    held = shard.layers if shard.span is None else shard.span[1] - shard.span[0]
    settings = msgspec.structs.replace(config, prompt_cache_bytes=config.prompt_cache_bytes * held // shard.layers)
    engine = make_engine(
        member.shard.model,
        member.shard.tokenizer,
        settings,
        context_length=member.shard.config.get("max_position_embeddings"),
        first_tokens_always_early=False,
        progress=progress,
        share=TokenShare(member.world),
    )
    engine.fail_at_first()
    return engine


def meet(member: Member, hosts: tuple[str, ...]) -> tuple[p.RankInfo, ...]:
    """Every rank's RankInfo, on every rank: a gather that also tells that every rank has loaded its shard."""
    import mlx.core as mx

    shard = member.shard
    first, end = shard.span if shard.span is not None else (-1, -1)
    mine = mx.array([[os.getpid(), mx.get_active_memory(), first, end]], dtype=mx.int64)
    rows = mx.distributed.all_gather(mine, group=member.world).tolist()
    return tuple(
        p.RankInfo(rank, hosts[rank], pid, memory, shard.describe(None if first < 0 else (first, end), len(hosts)))
        for rank, (pid, memory, first, end) in enumerate(rows)
    )
