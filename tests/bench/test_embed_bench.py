"""bench/embed_bench.py, tiny, against the real server: every request answered, every figure there."""

from __future__ import annotations

from bench.embed_bench import MODELS, bench_against, short_inputs, summary

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
