"""Quantized projections made fast on each backend: one matrix of rows, and float32 on the CPU.

One matrix of rows, not a batch of one-row matrices (every backend):

A decode step of B sequences gives every projection an input of shape
(B, 1, K): to ``mx.quantized_matmul`` that is B matrices of one row each,
against one weight. MLX's CUDA backend picks its kernel from the output's
last two dimensions (M rows) and counts the leading ones as a batch
(mlx/backend/cuda/quantized/quantized.cpp), so that batched 4-bit decode
there cost about what decoding the sequences one by one would
(docs/PERFORMANCE.md). MLX's Metal backend folds those dimensions itself
(for a 2-D weight and a row-contiguous input it takes M = x.size / K, in
mlx/backend/metal/quantized.cpp), which is why batched 4-bit decode scales
on Apple silicon; here it changes nothing. The same rows as one (B*L, K)
matrix make one product whatever the backend, and the reshape moves no
data (the rows are contiguous), so the worker folds the leading dimensions
of every quantized projection's input into one, including a tied output
layer (``QuantizedEmbedding.as_linear``). Each row is the same product (bit
for bit on the CPU backend, where the tests run; a GPU kernel for more rows
may round differently). mlx-lm builds its quantized layers as the plain
``mlx.nn`` classes; an instance of exactly those classes gets a subclass
that folds, everything else (a model's own quantized class) is left as it
is.

Float32 on the CPU backend: MLX's CPU kernel for quantized products runs
many times slower on bfloat16 inputs and scales than on float32, and slower
still on float16 (docs/PERFORMANCE.md), while mlx-lm's conversion keeps
scales in the model's own type, usually bfloat16 or float16. On the CPU
backend the worker therefore keeps each quantized projection's scales and
biases in float32 (for 4 bits in groups of 64, an eighth of the packed
weights' bytes becomes a quarter) and casts the input up and the output
back, so that everything around the product (the residual stream, the KV
cache) keeps the model's own type and size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import mlx.core as mx
import mlx.nn as nn

__all__ = ["compute_quantized_in_float32", "fold_quantized_inputs", "speed_up_quantized"]


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


class _Float32QuantizedLinear(_FoldedQuantizedLinear):
    def __call__(self, x: mx.array) -> mx.array:
        return super().__call__(x.astype(mx.float32)).astype(x.dtype)


class _Float32QuantizedEmbedding(_FoldedQuantizedEmbedding):
    # The type the model's activations had, which a lookup must still give.
    activation_dtype: mx.Dtype

    def __call__(self, x: mx.array) -> mx.array:
        return super().__call__(x).astype(self.activation_dtype)

    def as_linear(self, x: mx.array) -> mx.array:
        return super().as_linear(x.astype(mx.float32)).astype(x.dtype)


_FLOAT32 = {
    nn.QuantizedLinear: _Float32QuantizedLinear,
    _FoldedQuantizedLinear: _Float32QuantizedLinear,
    nn.QuantizedEmbedding: _Float32QuantizedEmbedding,
    _FoldedQuantizedEmbedding: _Float32QuantizedEmbedding,
}
_HALF = (mx.bfloat16, mx.float16)


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


def compute_quantized_in_float32(model: Any) -> int:
    """Make ``model``'s affine-quantized projections with half-precision scales compute in float32; how many changed.

    For the CPU backend only (see the module's docstring): elsewhere the
    half-precision kernels are the fast ones. Each changed projection also
    folds its input, as ``fold_quantized_inputs`` would have. Other modes
    (mxfp4 and the like keep integer scales) and a model's own quantized
    classes are left as they are.
    """
    changed = 0
    for module in model.modules():
        upcast = _FLOAT32.get(type(module))
        if upcast is None or getattr(module, "mode", "affine") != "affine" or module["scales"].dtype not in _HALF:
            continue
        activation_dtype = module["scales"].dtype
        module.scales = module["scales"].astype(mx.float32)
        if module.get("biases") is not None:
            module.biases = module["biases"].astype(mx.float32)
        module.__class__ = upcast
        if upcast is _Float32QuantizedEmbedding:
            module.activation_dtype = activation_dtype
        changed += 1
    return changed


def speed_up_quantized(model: Any) -> None:
    """What the worker does to every model it loads: fold everywhere, float32 on the CPU backend."""
    fold_quantized_inputs(model)
    if mx.default_device().type == mx.DeviceType.cpu:
        compute_quantized_in_float32(model)
