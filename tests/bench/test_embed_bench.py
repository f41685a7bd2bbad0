"""bench/embed_bench.py, tiny, against the real server: every request answered, every figure there."""

from __future__ import annotations

import json

import mlx.core as mx

from bench.embed_bench import MODELS, bench, bench_against, short_inputs, summary
from bench.embed_shapes import EMBED_SHAPES

from ..helpers import bounded


def test_short_inputs_are_short_and_never_repeat() -> None:
    texts = short_inputs(40) + short_inputs(40)
    assert len(set(texts)) == 80 and all(len(text.split()) == 6 for text in texts)


@bounded(120)
async def test_a_tiny_run_measures_every_model_and_batch(server) -> None:
    runs = await bench_against(server.openai_url, server.admin_url, MODELS, [1, 3], rounds=2, repeat=2)
    figures = summary(runs, MODELS, [1, 3])
    for model in MODELS:
        for batch in (1, 3):
            measured = figures[model][batch]
            assert measured["embeddings_per_s"] > 0 and measured["latency_p50_s"] > 0, (model, batch, measured)
            assert measured["tokens_per_input"] >= 6 and len(measured["embeddings_per_s_runs"]) == 2


def test_inputs_have_the_words_asked_for() -> None:
    assert all(len(text.split()) == 41 for text in short_inputs(3, words=40))


@bounded(240)
async def test_the_real_shapes_scaled_down_are_built_and_served_through_a_config_file(tmp_path, monkeypatch) -> None:
    # The real shapes' own keys, small: what the GPU run builds at full size, and the route it is served by.
    small = {
        "bert-base": {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 96},
        "qwen3-embedding-0.6b": {"hidden_size": 48, "num_hidden_layers": 2, "intermediate_size": 96,
                                 "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 12, "matryoshka_dimensions": [16, 48]},
    }
    for name, (builder, shape) in list(EMBED_SHAPES.items()):
        monkeypatch.setitem(EMBED_SHAPES, name, (builder, {**shape, **small[name]}))
    monkeypatch.setenv("MLX_CACHE_DIR", str(tmp_path / "cache"))
    models = list(EMBED_SHAPES)
    runs = await bench(models, [2], rounds=1, repeat=1, words=12, models_dir=tmp_path / "models")
    for name in models:
        assert runs[0][name][2]["embeddings_per_s"] > 0 and runs[0][name][2]["tokens_per_input"] >= 13, runs
        config = json.loads((tmp_path / "models" / name / "config.json").read_text())
        assert {key: config[key] for key in EMBED_SHAPES[name][1]} == EMBED_SHAPES[name][1]
        weights = mx.load(str(tmp_path / "models" / name / "model.safetensors"))
        assert {array.dtype for array in weights.values()} == {mx.bfloat16}
