"""What admitting a request costs the worker, which admits requests one after another."""

from __future__ import annotations

import json
from pathlib import Path

import mlx_lm
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlxtrio import _protocol as p
from mlxtrio.worker._demo import ensure_demo_model
from mlxtrio.worker._engine import BatchEngine, SequentialEngine
from mlxtrio.worker._tools import chat_messages

from .test_engine_failures import _generate, _run


@pytest.fixture(scope="module")
def demo(cache_dir: Path):  # noqa: ANN201
    return mlx_lm.load(str(ensure_demo_model(cache_dir)))


@pytest.mark.parametrize("engine_type", [BatchEngine, SequentialEngine])
def test_admission_converts_no_vocabulary(demo, engine_type, monkeypatch: pytest.MonkeyPatch):
    """A detokenizer built anew per request converted all 151,936 ids of a Qwen
    vocabulary (100 ms each, serial in the worker: 4 s of time to first token
    at 32 streams on an H100). Each sequence now gets a reset copy."""
    model, tokenizer = demo
    engine = engine_type(model, tokenizer, context_length=4096, prompt_cache_bytes=0)
    converted: list[int] = []
    original = tokenizer._tokenizer.convert_ids_to_tokens  # noqa: SLF001

    def counting(ids, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        converted.append(len(ids) if isinstance(ids, list | range) else 1)
        return original(ids, *args, **kwargs)

    monkeypatch.setattr(tokenizer._tokenizer, "convert_ids_to_tokens", counting)  # noqa: SLF001
    alone = {}
    for request_id, prompt in enumerate(["the cache", "a worker"], start=1):
        solo = engine_type(model, tokenizer, context_length=4096, prompt_cache_bytes=0)
        solo.admit(_generate(request_id, prompt))
        alone.update(_run(solo, {request_id})[0])
    converted.clear()
    engine.admit(_generate(1, "the cache"))
    engine.admit(_generate(2, "a worker"))
    assert max(converted, default=0) < tokenizer.vocab_size
    # Each sequence's detokenizer is its own: together they give what they give alone.
    together, failed = _run(engine, {1, 2})
    assert failed == {}
    assert together == alone
    assert all(len(text) > 0 for text in together.values())



_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40) | st.sampled_from(
    ["<|im_end|>", "<|im_start|>assistant\n", " ", "\n\n", "héllo wörld", "数字 123"]
)


@pytest.fixture(scope="module")
def demo_adding_bos(cache_dir: Path):  # noqa: ANN201
    """The demo model with a tokenizer whose encode adds a BOS token of its own, as many do:
    a prompt rendered from a chat template must be encoded without it."""
    from tokenizers import processors

    model, tokenizer = mlx_lm.load(str(ensure_demo_model(cache_dir)))
    bos = tokenizer.bos_token
    tokenizer._tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(  # noqa: SLF001
        single=f"{bos} $A", special_tokens=[(bos, tokenizer.convert_tokens_to_ids(bos))]
    )
    assert tokenizer.encode("hi")[0] == tokenizer.bos_token_id
    return model, tokenizer


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    turns=st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), _TEXT), min_size=1, max_size=4),
    tools=st.booleans(),
)
def test_chat_prompts_tokenize_as_the_template_does(demo_adding_bos, turns, tools: bool):
    """The worker renders the chat template and encodes its text in two calls (cheaper than
    tokenize=True); the tokens must be the ones the tokenizer's own apply_chat_template gives."""
    model, tokenizer = demo_adding_bos
    engine = BatchEngine(model, tokenizer, context_length=None, prompt_cache_bytes=0)
    messages = tuple(p.ChatMessage(role, content) for role, content in turns)
    tool_list = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}] if tools else None
    request = p.Generate(1, p.SamplingParams(max_tokens=4), messages, tools=json.dumps(tool_list) if tools else None)
    extra = {"tools": tool_list} if tools else {}
    expected = tokenizer.apply_chat_template(chat_messages(messages), add_generation_prompt=True, **extra)
    assert engine._prompt_tokens(request) == list(expected)  # noqa: SLF001
