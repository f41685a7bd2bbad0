"""Every rank takes rank 0's sampled tokens: one broadcast after each sampling.

Every rank computes the same logits (a pipeline gathers the last hidden
state to all; tensor parallelism reduces each layer's output), and every
rank runs the same samplers and logits processors; but the same logits
computed on two machines need not agree to the last bit, and a sample that
differs once sends the ranks' caches apart for good. So rank 0's tokens are
summed with zeros from the others: the followers' own samples are computed
(their tokens times zero, so that the broadcast comes after this rank's
logits in its graph, as on rank 0, and collectives pair up in the same order)
and thrown away.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import mlx.core as mx

    from .._mlx_lm import Sampler

__all__ = ["TokenShare"]

# MLX is imported where it is used: the worker imports this package before MLX, whose BLAS must be loaded first.


def _greedy(logprobs: mx.array) -> mx.array:
    import mlx.core as mx

    return mx.argmax(logprobs, axis=-1)


class TokenShare:
    """Wraps samplers so that every rank gets rank 0's tokens."""

    def __init__(self, world: Any) -> None:
        self._world = world
        self._leads = world.rank() == 0
        # One greedy sampler for every greedy sequence: a batch of them still samples (and broadcasts) in one call.
        self.greedy = self.wrap(_greedy)

    def wrap(self, sampler: Sampler) -> Sampler:
        import mlx.core as mx

        world, leads = self._world, self._leads

        def shared(logprobs: mx.array) -> mx.array:
            tokens = sampler(logprobs)
            return mx.distributed.all_sum(tokens if leads else tokens * 0, group=world)

        return shared
