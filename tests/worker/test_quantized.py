"""Quantized projections made fast (mlxtrio/worker/_mlx_lm/_quantized.py), demo model quantized to 4 bits.

What matters: in a batched step the quantized kernel is handed (rows, K)
matrices, never a batch of one-row matrices (which MLX's CUDA backend
multiplies one by one), and no output changes; on the CPU backend the
kernel computes in float32 while everything around it keeps the model's type.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import pytest

from mlxtrio import Config
from mlxtrio.orchestrator import ModelCatalog, ModelEntry
from mlxtrio.worker._demo import ensure_demo_model
from mlxtrio.worker._main import _load
from mlxtrio.worker._mlx_lm._quantized import compute_quantized_in_float32, fold_quantized_inputs


@pytest.fixture
def quantized_demo(cache_dir: Path):  # noqa: ANN201
    model, _ = mlx_lm.load(str(ensure_demo_model(cache_dir)))
    nn.quantize(model, group_size=64, bits=4)
    return model


@pytest.fixture
def bfloat16_quantized_demo(cache_dir: Path):  # noqa: ANN201
    """As mlx-lm converts most models: bfloat16 weights, so bfloat16 scales."""
    model, _ = mlx_lm.load(str(ensure_demo_model(cache_dir)))
    model.set_dtype(mx.bfloat16)
    nn.quantize(model, group_size=64, bits=4)
    return model


@pytest.fixture
def kernel_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[int, ...], mx.Dtype, mx.Dtype]]:
    """(input shape, input type, scales type) of every call of mx.quantized_matmul."""
    calls: list[tuple[tuple[int, ...], mx.Dtype, mx.Dtype]] = []
    original = mx.quantized_matmul

    def recording(x, w, scales, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append((tuple(x.shape), x.dtype, scales.dtype))
        return original(x, w, scales, *args, **kwargs)

    monkeypatch.setattr(mx, "quantized_matmul", recording)
    return calls


def _shapes(calls: list) -> list[tuple[int, ...]]:  # noqa: ANN001
    return sorted({shape for shape, _, _ in calls})


def _decode_and_prefill(model) -> list[mx.array]:  # noqa: ANN001
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    prefill = model(mx.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13, 14, 15]]), cache=cache)
    decode = model(mx.array([[16], [17], [18]]), cache=cache)
    mx.eval(prefill, decode)
    return [prefill, decode]


def test_a_batched_step_hands_the_quantized_kernel_matrices(quantized_demo, kernel_calls):
    before = _decode_and_prefill(quantized_demo)
    assert kernel_calls and all(len(shape) == 3 for shape in _shapes(kernel_calls))  # what mlx-lm does by itself
    kernel_calls.clear()
    # 2 layers x 7 projections, the output layer, and the embedding (for a tied output layer).
    assert fold_quantized_inputs(quantized_demo) == 16
    after = _decode_and_prefill(quantized_demo)
    assert _shapes(kernel_calls) == [(3, 64), (3, 128), (15, 64), (15, 128)]
    for folded, plain in zip(after, before, strict=True):
        assert folded.shape == plain.shape
        assert mx.array_equal(folded, plain).item()


def test_one_sequence_is_left_as_it_is(quantized_demo, kernel_calls):
    # (1, L, K) is already one product of L rows: no reshapes to add to every token's graph.
    from mlx_lm.models.cache import make_prompt_cache

    fold_quantized_inputs(quantized_demo)
    cache = make_prompt_cache(quantized_demo)
    mx.eval(quantized_demo(mx.array([[1, 2, 3, 4, 5]]), cache=cache), quantized_demo(mx.array([[6]]), cache=cache))
    assert _shapes(kernel_calls) == [(1, 1, 64), (1, 1, 128), (1, 5, 64), (1, 5, 128)]


def test_a_tied_output_layer_is_folded_too(kernel_calls):
    embedding = nn.QuantizedEmbedding(512, 64, group_size=64, bits=4)
    x = mx.random.normal((3, 2, 64), key=mx.random.key(0))
    plain = embedding.as_linear(x)
    tree = nn.Sequential(embedding)
    assert fold_quantized_inputs(tree) == 1
    kernel_calls.clear()
    folded = embedding.as_linear(x)
    assert [shape for shape, _, _ in kernel_calls] == [(6, 64)]
    assert folded.shape == (3, 2, 512)
    assert mx.array_equal(folded, plain).item()
    # Looking tokens up is unchanged, and an empty batch keeps its shape.
    assert embedding(mx.array([[1, 2]])).shape == (1, 2, 64)
    assert embedding.as_linear(mx.zeros((0, 1, 64))).shape == (0, 1, 512)


def test_only_mlx_own_classes_change():
    class Custom(nn.QuantizedLinear):
        pass

    custom, plain = Custom(64, 64, group_size=64, bits=4), nn.QuantizedLinear(64, 64, group_size=64, bits=4)
    assert fold_quantized_inputs(nn.Sequential(custom, plain, nn.Linear(4, 4))) == 1
    assert type(custom) is Custom
    assert isinstance(plain, nn.QuantizedLinear) and type(plain) is not nn.QuantizedLinear
    # Twice is once.
    assert fold_quantized_inputs(nn.Sequential(plain)) == 0


def test_on_the_cpu_quantized_products_run_in_float32(bfloat16_quantized_demo, kernel_calls):
    from mlx_lm.models.cache import make_prompt_cache

    model = bfloat16_quantized_demo
    tokens = mx.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    before = model(tokens, cache=make_prompt_cache(model))
    mx.eval(before)
    assert {(x, scales) for _, x, scales in kernel_calls} == {(mx.bfloat16, mx.bfloat16)}
    kernel_calls.clear()
    # 2 layers x 7 projections, the output layer, and the embedding.
    assert compute_quantized_in_float32(model) == 16
    cache = make_prompt_cache(model)
    after = model(tokens, cache=cache)
    mx.eval(after)
    assert {(x, scales) for _, x, scales in kernel_calls} == {(mx.float32, mx.float32)}
    # Around the products nothing changes type: logits, KV cache, embeddings.
    assert after.dtype == mx.bfloat16
    assert cache[0].keys.dtype == mx.bfloat16
    assert model.model.embed_tokens(tokens).dtype == mx.bfloat16
    # The same products, rounded less: the same greedy tokens, logits within bfloat16's rounding (relative:
    # the logits of the tokens the demo never samples lie far below zero, where a bfloat16 step is 0.5).
    assert mx.array_equal(mx.argmax(after, axis=-1), mx.argmax(before, axis=-1)).item()
    assert mx.allclose(after.astype(mx.float32), before.astype(mx.float32), rtol=2**-7, atol=0.1).item()
    assert compute_quantized_in_float32(model) == 0  # twice is once


def test_float32_leaves_alone_what_is_not_half_precision_affine():
    class Custom(nn.QuantizedLinear):
        pass

    custom = Custom(64, 64, group_size=64, bits=4)
    custom.set_dtype(mx.bfloat16)
    already = nn.QuantizedLinear(64, 64, group_size=64, bits=4)  # float32 scales
    microscaled = nn.QuantizedLinear(64, 64, mode="mxfp4")  # integer scales
    half = nn.QuantizedLinear(64, 64, group_size=64, bits=4)
    half.set_dtype(mx.float16)
    assert compute_quantized_in_float32(nn.Sequential(custom, already, microscaled, half, nn.Linear(4, 4))) == 1
    assert type(custom) is Custom and custom.scales.dtype == mx.bfloat16
    assert type(already) is nn.QuantizedLinear and type(microscaled) is nn.QuantizedLinear
    assert half.scales.dtype == mx.float32 and half.biases.dtype == mx.float32
    x = mx.random.normal((2, 3, 64), key=mx.random.key(1)).astype(mx.float16)
    assert half(x).dtype == mx.float16 and half(x).shape == (2, 3, 64)


def test_the_worker_loads_a_quantized_model_folded(cache_dir: Path, tmp_path: Path):
    from mlx_lm import convert

    quantized = tmp_path / "demo-4bit"
    convert(
        str(ensure_demo_model(cache_dir)), mlx_path=str(quantized), quantize=True, q_group_size=64, q_bits=4,
        dtype="bfloat16",
    )
    config = ModelCatalog(Config.from_environment(env={}, cache_dir=cache_dir)).worker_config(ModelEntry("demo-4bit", "local", str(quantized), ""))
    model, _, _, _, _ = _load(config)
    projections = [module for module in model.modules() if isinstance(module, nn.QuantizedLinear)]
    assert projections
    assert all(type(module) is not nn.QuantizedLinear for module in projections)
    # The tests run on the CPU backend, where the worker computes them in float32.
    assert all(module.scales.dtype == mx.float32 for module in projections)
