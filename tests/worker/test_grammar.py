"""Grammar-constrained decoding in the engines, in-process with the demo model's random weights."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import mlx_lm
import pytest

from mlxtrio import _protocol as p
from mlxtrio.api._structured import schema_regex
from mlxtrio.worker._demo import ensure_demo_model
from mlxtrio.worker._engine import BatchEngine, SequentialEngine
from mlxtrio.worker._grammar import _token_bytes

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "ok": {"type": "boolean"},
        "colour": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2},
    },
    "required": ["name", "ok", "colour", "tags"],
}


@pytest.fixture(scope="module")
def demo(cache_dir: Path):  # noqa: ANN201
    return mlx_lm.load(str(ensure_demo_model(cache_dir)))


def _texts(engine, requests: list[p.Generate]) -> dict[int, tuple[str, str]]:  # noqa: ANN001
    for request in requests:
        engine.admit(request)
    texts: dict[int, str] = {}
    done: dict[int, tuple[str, str]] = {}
    while len(done) < len(requests):
        deltas, failures = engine.step()
        assert not failures, failures
        for delta in deltas:
            texts[delta.request_id] = texts.get(delta.request_id, "") + delta.text
            if delta.finish_reason is not None:
                done[delta.request_id] = (texts[delta.request_id], delta.finish_reason)
    return done


@pytest.mark.parametrize("engine_type", [BatchEngine, SequentialEngine])
def test_constrained_output_is_valid_even_from_random_weights(demo, engine_type):
    model, tokenizer = demo
    regex = schema_regex(SCHEMA)
    for seed in range(4):
        params = p.SamplingParams(max_tokens=400, temperature=1.0, seed=seed, grammar=regex, ignore_eos=True)
        ((text, finish),) = _texts(engine_type(model, tokenizer, context_length=4096, prompt_cache_bytes=0), [p.Generate(1, params, None, "JSON please")]).values()
        # ignore_eos gives way: a finished grammar must end the sequence.
        assert finish == "stop", text
        jsonschema.validate(json.loads(text), SCHEMA)


def test_a_constrained_sequence_in_a_batch_leaves_the_others_alone(demo):
    model, tokenizer = demo
    free = p.SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
    alone = _texts(BatchEngine(model, tokenizer, context_length=4096, prompt_cache_bytes=0), [p.Generate(1, free, None, "tell me")])
    constrained = p.SamplingParams(max_tokens=400, temperature=1.0, seed=3, grammar=schema_regex(SCHEMA))
    together = _texts(
        BatchEngine(model, tokenizer, context_length=4096, prompt_cache_bytes=0),
        [p.Generate(1, free, None, "tell me"), p.Generate(2, constrained, None, "JSON please")],
    )
    assert together[1] == alone[1]
    jsonschema.validate(json.loads(together[2][0]), SCHEMA)


def test_token_bytes_of_both_tokenizer_families():
    assert _token_bytes("Ġhello", byte_level=True) == b" hello"
    assert _token_bytes("ĊĠ", byte_level=True) == b"\n "
    assert _token_bytes("Ã©", byte_level=True) == "é".encode()
    assert _token_bytes("▁hello", byte_level=False) == b" hello"
    assert _token_bytes("<0xE2>", byte_level=False) == b"\xe2"
