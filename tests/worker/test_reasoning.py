"""The model's thinking: the template's switch going in, and ``Delta.reasoning`` split from the text coming out."""

from __future__ import annotations

import json

import msgspec
import pytest

from mlxtrio import _protocol as p
from mlxtrio.worker._batch import BatchEngine
from mlxtrio.worker._output import new_output
from mlxtrio.worker._reasoning import ReasoningSplitter
from mlxtrio.worker._sequential import SequentialEngine
from mlxtrio.worker._token_pieces import TokenPieces
from mlxtrio.worker._tools import chat_messages

from .engines import GREEDY, demo_engine

_TEXT = "ab <think>\nwhy not</think>\n\nthe answer<think>again</think>end<th"


@pytest.mark.parametrize("inside", [False, True])
def test_the_split_is_the_same_however_the_text_arrives(inside: bool):
    whole = ReasoningSplitter("<think>", "</think>", inside=inside).feed(_TEXT, final=True)
    if not inside:
        # Past a marker, its whitespace is neither part's; a partial marker at the very end is text.
        assert whole == ("why notagain", "ab the answerend<th")
    for cut in range(len(_TEXT) + 1):
        for size in (1, 2, 5):
            splitter = ReasoningSplitter("<think>", "</think>", inside=inside)
            pieces = [_TEXT[:cut], *(_TEXT[at : at + size] for at in range(cut, len(_TEXT), size))]
            parts = [splitter.feed(piece, final=False) for piece in pieces]
            parts.append(splitter.feed("", final=True))
            assert ("".join(part[0] for part in parts), "".join(part[1] for part in parts)) == whole


def _chat(request_id: int, params: p.SamplingParams = GREEDY, **options: object) -> p.Generate:
    return p.Generate(request_id, params, (p.ChatMessage("user", "the cache"),), None, **options)


def _sequence(engine, request: p.Generate) -> tuple[str, str, p.Delta]:  # noqa: ANN001
    """The request's reasoning, its text and its last delta."""
    engine.admit(request)
    reasoning = text = ""
    for _ in range(200):
        deltas, failures = engine.step()
        assert failures == []
        for delta in deltas:
            reasoning += delta.reasoning
            text += delta.text
            if delta.finish_reason is not None:
                return reasoning, text, delta
    raise AssertionError("the sequence never ended")


@pytest.mark.parametrize("engine_type", [BatchEngine, SequentialEngine])
def test_with_thinking_on_the_demo_reasons_and_stop_strings_skip_its_reasoning(demo, engine_type):
    engine = demo_engine(engine_type, demo, prompt_cache_bytes=0)
    for thinking in (None, False):
        reasoning, text, last = _sequence(engine, _chat(1, thinking=thinking))
        assert reasoning == "" and len(text) > 0
    reasoning, text, last = _sequence(engine, _chat(2, thinking=True))
    # The template opened a think block and the demo never writes "</think>": all of it is reasoning.
    assert text == "" and len(reasoning) > 0 and last.finish_reason == "length"
    assert last.completion_tokens == GREEDY.max_tokens
    # A stop string in the reasoning does not end the sequence: stop strings look at the text only.
    stop = reasoning[2:5]
    again = _sequence(engine, _chat(3, msgspec.structs.replace(GREEDY, stop=(stop,)), thinking=True))
    assert again[:2] == (reasoning, "") and (again[2].finish_reason, again[2].stop_string) == ("length", None)
    # Left in the text (chat completions), the same tokens are text.
    assert _sequence(engine, _chat(4, thinking=True, split_reasoning=False))[:2] == ("", reasoning)


def test_thinking_and_earlier_reasoning_reach_the_template(demo):
    model, tokenizer = demo
    engine = demo_engine(BatchEngine, demo)
    prompt_tokens = engine._prompt_tokens  # noqa: SLF001
    turns = (p.ChatMessage("user", "hi"), p.ChatMessage("assistant", "yo", reasoning="mulling it"), p.ChatMessage("user", "x"))
    plain = tokenizer.decode(prompt_tokens(p.Generate(1, GREEDY, turns, None)))
    assert plain.endswith("<|assistant|><think>\nmulling it\n</think>\nyo<|end|><|user|>x<|end|><|assistant|>")
    # Unset, the switch is the template's default (the demo's: off), where mlx-lm's wrapper would switch it on.
    assert tokenizer.apply_chat_template(chat_messages(turns), add_generation_prompt=True, tokenize=False) == plain + "<think>\n"
    assert tokenizer.decode(prompt_tokens(p.Generate(1, GREEDY, turns, None, thinking=False))) == plain
    assert tokenizer.decode(prompt_tokens(p.Generate(1, GREEDY, turns, None, thinking=True))) == plain + "<think>\n"
    # Counted as generating would render it, the switch included.
    counts = []
    for thinking in (None, True):
        engine.admit(p.Generate(1, GREEDY, turns, None, thinking=thinking, count_only=True))
        (counted,), _ = engine.step()
        counts.append(counted.prompt_tokens)
    assert counts[1] == counts[0] + 2


def _output(tokenizer, request: p.Generate, prompt: list[int]):  # noqa: ANN001, ANN202
    return new_output(tokenizer, TokenPieces(tokenizer), request, request.params, prompt, 0, [], parse_tools=True)


def test_markers_the_model_writes_split_its_output_and_tool_calls_come_from_the_text_only(demo):
    model, tokenizer = demo
    tools = json.dumps([{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}])
    params = msgspec.structs.replace(GREEDY, max_tokens=200)
    request = p.Generate(1, params, (p.ChatMessage("user", "x"),), None, tools=tools, parse_tool_calls=True)
    call = '<tool_call>{"name": "lookup", "arguments": {"q": 1}}</tool_call>'
    written = f"<think>maybe {call}</think>so {call}"
    sequence = _output(tokenizer, request, tokenizer.encode("<|assistant|>", add_special_tokens=False))
    deltas = [sequence.accept(token, None) for token in tokenizer.encode(written, add_special_tokens=False)]
    deltas.append(sequence.accept(None, "stop"))
    sent = [delta for delta in deltas if delta is not None]
    assert "".join(delta.reasoning for delta in sent) == f"maybe {call}"
    assert "".join(delta.text for delta in sent) == "so "
    assert [call for delta in sent for call in delta.tool_calls] == [p.ToolCall("lookup", '{"q": 1}')]
    assert sent[-1].finish_reason == "tool_calls"


def test_a_prompt_that_opens_a_think_block_starts_in_reasoning_unless_a_grammar_governs(demo):
    model, tokenizer = demo
    opened = tokenizer.encode("<|assistant|><think>\n", add_special_tokens=False)
    closed = tokenizer.encode("<|assistant|><think>\nno</think>\n", add_special_tokens=False)
    grammar = msgspec.structs.replace(GREEDY, grammar=p.Grammar("regex", "a+"))
    for prompt, params, expected in ((opened, GREEDY, ("abc", "")), (closed, GREEDY, ("", "abc")), (opened, grammar, ("", "abc"))):
        sequence = _output(tokenizer, p.Generate(1, params, None, "x"), prompt)
        deltas = [sequence.accept(token, None) for token in tokenizer.encode("abc", add_special_tokens=False)]
        deltas.append(sequence.accept(None, "stop"))
        sent = [delta for delta in deltas if delta is not None]
        assert ("".join(d.reasoning for d in sent), "".join(d.text for d in sent)) == expected


def test_the_tokens_that_were_thinking_are_counted_apart(demo):
    """Usage's reasoning tokens are the tokens written inside a think block, its markers with it; the rest are the answer's."""
    model, tokenizer = demo
    request = p.Generate(1, msgspec.structs.replace(GREEDY, max_tokens=200), (p.ChatMessage("user", "x"),), None)
    thinking = tokenizer.encode("<think>let me see</think>", add_special_tokens=False)
    answer = tokenizer.encode("it is so", add_special_tokens=False)
    sequence = _output(tokenizer, request, tokenizer.encode("<|assistant|>", add_special_tokens=False))
    deltas = [sequence.accept(token, None) for token in thinking + answer]
    last = sequence.accept(None, "stop")
    assert last.completion_tokens == len(thinking) + len(answer)
    assert last.reasoning_tokens == len(thinking)
    assert max(delta.reasoning_tokens for delta in deltas if delta is not None) <= len(thinking)
    # Without a split (chat completions keeps thinking in its text), nothing is counted apart.
    plain = _output(tokenizer, p.Generate(1, request.params, request.messages, None, split_reasoning=False), [])
    for token in thinking + answer:
        plain.accept(token, None)
    assert plain.accept(None, "stop").reasoning_tokens == 0
