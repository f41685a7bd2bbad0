"""Quantized projections fed one matrix of rows, not a batch of one-row matrices.

A decode step of B sequences gives every projection an input of shape
(B, 1, K): to ``mx.quantized_matmul`` that is B matrices of one row each,
against one weight. MLX's CUDA backend picks its kernel from the output's
last two dimensions (M rows) and counts the leading ones as a batch
(mlx/backend/cuda/quantized/quantized.cpp). On an H100 a decode step of the
Qwen2.5-7B shape in 4 bits took 7.3 ms for one sequence, 32 ms for 8 and
95 ms for 32, while its largest projection given a (B, K) matrix took
0.10-0.22 ms at every B from 1 to 32 (bench/batch_scaling_probe.py,
docs/PERFORMANCE.md): batched 4-bit decode cost about what decoding the
sequences one by one would, and B one-row products instead of one B-row
product would explain it. With this fold the same H100 took 8.5 ms for one
sequence, 17 ms for 8 and 25 ms for 32 (``step_ms_folded``), and mlxtrio's
aggregate at 32 streams went from 312 to 1,069 tokens/s.

MLX's Metal backend folds those dimensions itself (for a 2-D weight and a
row-contiguous input it takes M = x.size / K, in
mlx/backend/metal/quantized.cpp), which is why batched 4-bit decode scales
on Apple silicon; here it changes nothing. The same rows as one (B*L, K)
matrix make one product whatever the backend, and the reshape moves no
data (the rows are contiguous), so the worker folds
the leading dimensions of every quantized projection's input into one,
including a tied output layer (``QuantizedEmbedding.as_linear``). Each row
is the same product (bit for bit on the CPU backend, where the tests run; a
GPU kernel for more rows may round differently). mlx-lm builds its
quantized layers as the plain ``mlx.nn`` classes; an instance of exactly
those classes gets a subclass that folds, everything else (a model's own
quantized class) is left as it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import mlx.core as mx
import mlx.nn as nn

__all__ = ["fold_quantized_inputs"]


def _folded(project: Callable[[mx.array], mx.array], x: mx.array) -> mx.array:
    # One sequence, (1, L, K), is one product of L rows on every backend
    # already; it gets no reshapes, which would only lengthen the graph that
    # a single stream's decode builds on the CPU thread for every token.
    if x.ndim <= 2 or math.prod(x.shape[:-2]) == 1:
        return project(x)
    out = project(x.reshape(-1, x.shape[-1]))
    return out.reshape(*x.shape[:-1], out.shape[-1])


class _FoldedQuantizedLinear(nn.QuantizedLinear):
    def __call__(self, x: mx.array) -> mx.array:
        return _folded(super().__call__, x)


class _FoldedQuantizedEmbedding(nn.QuantizedEmbedding):
    def as_linear(self, x: mx.array) -> mx.array:
        return _folded(super().as_linear, x)


_FOLDED = {nn.QuantizedLinear: _FoldedQuantizedLinear, nn.QuantizedEmbedding: _FoldedQuantizedEmbedding}


def fold_quantized_inputs(model: Any) -> int:
    """Make ``model``'s quantized projections fold their inputs' leading dimensions; how many were changed.

    The instances keep their parameters and settings: only their class
    becomes the folding subclass (which adds no state), so nothing is copied
    or quantized again.
    """
    changed = 0
    for module in model.modules():
        folded = _FOLDED.get(type(module))
        if folded is not None:
            module.__class__ = folded
            changed += 1
    return changed
