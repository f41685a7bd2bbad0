"""Grammar-constrained decoding in the engines, in-process with the demo model's random weights."""

from __future__ import annotations

import json
import time

import jsonschema
import pytest

from mlxtrio import _protocol as p
from mlxtrio.worker._batch import BatchEngine
from mlxtrio.worker._failures import RequestError
from mlxtrio.worker._grammar import GrammarCompiler, GrammarError, _closed
from mlxtrio.worker._sequential import SequentialEngine

from .engines import demo_engine

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "ok": {"type": "boolean"},
        "colour": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2},
        "count": {"type": "integer", "minimum": 3, "maximum": 17},
    },
    "required": ["name", "ok", "colour", "tags", "count"],
    "additionalProperties": False,
}


def schema(value: dict) -> p.Grammar:
    return p.Grammar("json_schema", json.dumps(value))


def nested_arrays(depth: int) -> dict:
    node: dict = {"type": "string"}
    for _ in range(depth):
        node = {"type": "array", "items": node}
    return node


def _texts(engine, requests: list[p.Generate]) -> dict[int, tuple[str, str]]:  # noqa: ANN001
    for request in requests:
        engine.admit(request)
    texts: dict[int, str] = {}
    done: dict[int, tuple[str, str]] = {}
    while len(done) < len(requests):
        deltas, failures = engine.step()
        assert not failures, failures
        for delta in deltas:
            assert delta.error is None, delta.error
            texts[delta.request_id] = texts.get(delta.request_id, "") + delta.text
            if delta.finish_reason is not None:
                done[delta.request_id] = (texts[delta.request_id], delta.finish_reason)
    return done


@pytest.mark.parametrize("engine_type", [BatchEngine, SequentialEngine])
def test_constrained_output_is_valid_even_from_random_weights(demo, engine_type):
    model, tokenizer = demo
    for seed in range(4):
        params = p.SamplingParams(max_tokens=400, temperature=1.0, seed=seed, grammar=schema(SCHEMA), ignore_eos=True)
        ((text, finish),) = _texts(demo_engine(engine_type, demo, prompt_cache_bytes=0), [p.Generate(1, params, None, "JSON please")]).values()
        # ignore_eos gives way: a finished grammar must end the sequence.
        assert finish == "stop", text
        jsonschema.validate(json.loads(text), SCHEMA)


def test_a_constrained_sequence_in_a_batch_leaves_the_others_alone(demo):
    model, tokenizer = demo
    free = p.SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
    alone = _texts(demo_engine(BatchEngine, demo, prompt_cache_bytes=0), [p.Generate(1, free, None, "tell me")])
    constrained = p.SamplingParams(max_tokens=400, temperature=1.0, seed=3, grammar=schema(SCHEMA))
    together = _texts(
        demo_engine(BatchEngine, demo, prompt_cache_bytes=0),
        [p.Generate(1, free, None, "tell me"), p.Generate(2, constrained, None, "JSON please")],
    )
    assert together[1] == alone[1]
    jsonschema.validate(json.loads(together[2][0]), SCHEMA)


def test_a_required_tool_call_grammar_writes_one_call(demo):
    from mlxtrio.api._structured import tool_call_grammar

    model, tokenizer = demo
    call = {
        "type": "object",
        "properties": {"name": {"const": "get_weather"}, "arguments": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}}, "required": ["city"], "additionalProperties": False}},
        "required": ["name", "arguments"],
    }
    grammar = tool_call_grammar(call, param="tools", max_bytes=1 << 16)
    params = p.SamplingParams(max_tokens=400, temperature=1.0, seed=2, grammar=grammar)
    ((text, _),) = _texts(demo_engine(BatchEngine, demo, prompt_cache_bytes=0), [p.Generate(1, params, None, "call")]).values()
    assert text.startswith("<tool_call>") and text.endswith("</tool_call>"), text
    body = json.loads(text[len("<tool_call>") : -len("</tool_call>")])
    jsonschema.validate(body, call)


# Issue 22: schemas that exploded an up-front regex compiler (outlines-core), in
# time or memory. Each compiles in well under the bound, or is refused by name.
@pytest.mark.parametrize(
    "bomb",
    [
        pytest.param(nested_arrays(30), id="arrays-nested-30"),
        pytest.param({"type": "string", "maxLength": 20}, id="maxLength-20"),
        pytest.param({"type": "string", "minLength": 20}, id="minLength-20"),
        pytest.param({"type": "string", "maxLength": 100_000}, id="maxLength-100000"),
        pytest.param({"type": "string", "pattern": "(a|b)*a(a|b){40}"}, id="pattern-dfa-blowup"),
    ],
)
def test_schema_bombs_compile_fast(demo, bomb):
    _, tokenizer = demo
    compiler = GrammarCompiler(tokenizer)
    started = time.perf_counter()
    compiler.compile(schema(bomb))
    assert time.perf_counter() - started < 0.5


def test_a_schema_too_deep_for_the_parser_is_refused_by_name(demo):
    _, tokenizer = demo
    with pytest.raises(GrammarError, match="recursion limit"):
        GrammarCompiler(tokenizer).compile(schema(nested_arrays(300)))


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ({"not": {"type": "string"}}, "not"),
    ],
)
def test_what_cannot_be_enforced_is_refused_with_what(demo, bad, words):
    _, tokenizer = demo
    grammar = p.Grammar("json_schema", json.dumps(bad), "response_format.json_schema.schema")
    with pytest.raises(GrammarError, match=words) as caught:
        GrammarCompiler(tokenizer).compile(grammar)
    assert caught.value.param == "response_format.json_schema.schema"
    assert str(caught.value).startswith("response_format.json_schema.schema: ")


def test_an_engine_turns_a_refused_grammar_into_a_400_naming_the_field(demo):
    model, tokenizer = demo
    engine = demo_engine(BatchEngine, demo, prompt_cache_bytes=0)
    grammar = p.Grammar("json_schema", json.dumps({"type": "array", "uniqueItems": True}), "tools")
    with pytest.raises(RequestError) as caught:
        engine.admit(p.Generate(1, p.SamplingParams(max_tokens=4, grammar=grammar), None, "x"))
    assert (caught.value.kind, caught.value.param) == (p.ErrorKind.INVALID_REQUEST, "tools")


def test_the_compile_thread_shares_one_compile_between_requests_and_keeps_the_result(demo):
    _, tokenizer = demo
    compiler = GrammarCompiler(tokenizer)
    grammar = schema(SCHEMA)
    first, second = compiler.submit(grammar), compiler.submit(grammar)
    assert first is second
    matcher = first.result(timeout=10)
    assert not compiler.compiled(grammar)
    compiler.keep(grammar, matcher)
    assert compiler.compiled(grammar)
    failed = compiler.submit(schema({"uniqueItems": True}))
    with pytest.raises(GrammarError):
        failed.result(timeout=10)


def test_a_grammar_that_fails_midway_ends_its_sequence_with_an_error(demo):
    model, tokenizer = demo
    engine = demo_engine(BatchEngine, demo, prompt_cache_bytes=0)
    params = p.SamplingParams(max_tokens=50, temperature=1.0, seed=1, grammar=schema(SCHEMA))
    engine.admit(p.Generate(1, params, None, "JSON"))
    deltas, _ = engine.step()
    # Stand in for a limit of llguidance's per-token work running out midway.
    processor = next(iter(engine._by_uid.values())).grammar if engine._by_uid else engine._alone.sequence.grammar  # noqa: SLF001
    (letter,) = tokenizer.encode("Z", add_special_tokens=False)
    assert not processor._matcher.consume_token(letter)  # noqa: SLF001 - no JSON starts so: the matcher fails
    last = None
    for _ in range(60):
        deltas, failures = engine.step()
        assert not failures
        for delta in deltas:
            if delta.finish_reason is not None:
                last = delta
        if last is not None:
            break
    assert last is not None and last.error is not None
    assert last.error.startswith("response_format: enforcing the schema failed midway")


def test_objects_that_list_properties_are_closed_unless_they_say_otherwise():
    schema = {
        "type": "object",
        "properties": {"a": {"type": "object", "properties": {"b": {"type": "integer"}}}, "open": {"type": "object", "properties": {}, "additionalProperties": True}},
        "$defs": {"d": {"properties": {"x": {}}}},
        "anyOf": [{"properties": {"y": {}}}],
        "const": {"properties": {"kept": "as data"}},
    }
    closed = _closed(json.loads(json.dumps(schema)))
    assert closed["additionalProperties"] is False
    assert closed["properties"]["a"]["additionalProperties"] is False
    assert closed["properties"]["open"]["additionalProperties"] is True
    assert closed["$defs"]["d"]["additionalProperties"] is False
    assert closed["anyOf"][0]["additionalProperties"] is False
    assert closed["const"] == schema["const"]
    # Free-form objects stay free.
    assert _closed({"type": "object"}) == {"type": "object"}


def test_a_schema_without_additional_properties_gets_no_keys_of_the_models_choosing(demo):
    model, tokenizer = demo
    open_schema = {key: value for key, value in SCHEMA.items() if key != "additionalProperties"}
    for seed in range(3):
        params = p.SamplingParams(max_tokens=300, temperature=1.0, seed=seed, grammar=schema(open_schema))
        ((text, finish),) = _texts(demo_engine(BatchEngine, demo, prompt_cache_bytes=0), [p.Generate(1, params, None, "JSON")]).values()
        assert finish == "stop", text
        assert set(json.loads(text)) == set(SCHEMA["properties"])


def test_the_compiled_grammars_kept_are_bounded_by_their_schemas_bytes(demo):
    from mlxtrio.worker import _grammar

    _, tokenizer = demo
    compiler = GrammarCompiler(tokenizer)
    large = [schema({"type": "object", "properties": {f"p{i}_{n}": {"type": "integer"} for i in range(1200)}}) for n in range(8)]
    assert all(len(grammar.text) > _grammar._CACHE_BYTES // 8 for grammar in large)
    for grammar in large:
        compiler.processor(grammar)
    assert compiler.compiled(large[-1])
    assert sum(len(grammar.text) for grammar in large if compiler.compiled(grammar)) <= _grammar._CACHE_BYTES
    assert not compiler.compiled(large[0])
    small = [schema({"const": n}) for n in range(40)]
    for grammar in small:
        compiler.processor(grammar)
    assert [compiler.compiled(grammar) for grammar in small].count(True) == _grammar._CACHE_SIZE
