"""Tool-call extraction from a sequence's text, with mlx-lm's json_tools parser."""

from __future__ import annotations

from types import SimpleNamespace

from mlx_lm.tool_parsers import json_tools

from mlxtrio._protocol import ToolCall
from mlxtrio.worker._tools import ToolCallExtractor

TOKENIZER = SimpleNamespace(
    tool_call_start=json_tools.tool_call_start, tool_call_end=json_tools.tool_call_end, tool_parser=json_tools.parse_tool_call
)


def _feed(pieces: list[str]) -> tuple[str, list[ToolCall]]:
    extractor = ToolCallExtractor(TOKENIZER, None)
    content, calls = [], []
    for number, piece in enumerate(pieces):
        text, found = extractor.feed(piece, final=number == len(pieces) - 1)
        content.append(text)
        calls.extend(found)
    return "".join(content), calls


def test_calls_come_out_whole_even_when_markers_are_split():
    text = 'Let me look. <tool_call>{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call>'
    for cut in range(1, len(text)):
        content, calls = _feed([text[:cut], text[cut:], ""])
        assert content == "Let me look. "
        assert calls == [ToolCall("weather", '{"city": "Oslo"}')]


def test_several_calls_and_text_between():
    content, calls = _feed(['<tool_call>{"name": "a", "arguments": {}}</tool_call> and <tool_call>{"name": "b", "arguments": {"x": 1}}</tool_call>'])
    assert content == " and " and [call.name for call in calls] == ["a", "b"]


def test_what_does_not_parse_or_is_cut_short_stays_text():
    broken = "<tool_call>not json</tool_call>"
    assert _feed([broken]) == (broken, [])
    cut = '<tool_call>{"name": "a"'
    assert _feed([cut, ""]) == (cut, [])
    assert _feed(["a < b, <tool", "ish> c"]) == ("a < b, <toolish> c", [])


def test_a_block_with_several_calls_gives_them_all():
    from mlx_lm.tool_parsers import pythonic

    tokenizer = SimpleNamespace(tool_call_start="<|tool_call_start|>", tool_call_end="<|tool_call_end|>", tool_parser=pythonic.parse_tool_call)
    extractor = ToolCallExtractor(tokenizer, None)
    content, calls = extractor.feed("<|tool_call_start|>[a(x=1), b(y='z')]<|tool_call_end|>", final=True)
    assert content == "" and calls == [ToolCall("a", '{"x": 1}'), ToolCall("b", '{"y": "z"}')]


def test_with_a_limit_of_one_the_first_call_ends_it():
    extractor = ToolCallExtractor(TOKENIZER, None, limit=1)
    content, calls = extractor.feed(
        'ok <tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": "b", "arguments": {}}</tool_call>', final=False
    )
    assert (content, [call.name for call in calls], extractor.done) == ("ok ", ["a"], True)
