"""Tool calls in the output: the model's own syntax, parsed by mlx-lm's parser for its family.

mlx-lm picks a parser per tokenizer (from the chat template or the
vocabulary) with the markers that open and close a call. Here the text a
sequence releases is split: what lies outside markers is content; what lies
between them is held back and parsed into a ToolCall when the closing marker
comes. A marker may arrive split across tokens, so a tail that could be the
start of one is held back too. A call the parser cannot read is given back as
text: nothing the model wrote is lost.
"""

from __future__ import annotations

import json
from typing import Any

from .._protocol import ToolCall

__all__ = ["ToolCallExtractor", "chat_messages", "partial_suffix", "tool_format"]


def tool_format(tokenizer: Any) -> str | None:
    """The name of the model's tool-call format (mlx-lm's parser module), None without tool calling."""
    if not getattr(tokenizer, "has_tool_calling", False):
        return None
    parser = getattr(tokenizer, "tool_parser", None)
    module = getattr(parser, "__module__", "") or ""
    return module.rsplit(".", 1)[-1] or "unknown"


def chat_messages(messages) -> list[dict]:  # noqa: ANN001 - ChatMessages
    """Messages as chat templates take them: arguments as mappings where they parse."""
    rendered = []
    for message in messages:
        entry: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.parts:
            # Parts in order, as vision models' templates take them: each image becomes the model's placeholder for one.
            entry["content"] = [{"type": "text", "text": part.text} if part.image < 0 else {"type": "image"} for part in message.parts]
        if message.tool_calls:
            calls = []
            for call in message.tool_calls:
                try:
                    arguments: Any = json.loads(call.arguments)
                except (ValueError, RecursionError):  # not JSON, or nested past what json.loads takes: as text
                    arguments = call.arguments
                calls.append({"id": call.id, "type": "function", "function": {"name": call.name, "arguments": arguments}})
            entry["tool_calls"] = calls
        if message.tool_call_id is not None:
            entry["tool_call_id"] = message.tool_call_id
        if message.reasoning:
            # The name Qwen3's and DeepSeek's templates read an earlier turn's thinking from.
            entry["reasoning_content"] = message.reasoning
        rendered.append(entry)
    return rendered


class ToolCallExtractor:
    """Splits released text into content and tool calls, one sequence's worth."""

    def __init__(self, tokenizer: Any, tools: list[dict] | None, *, limit: int = 0) -> None:
        # After ``limit`` calls (0: no limit) the sequence is done: the rest is not read.
        self._limit = limit
        self._start = tokenizer.tool_call_start
        self._end = tokenizer.tool_call_end
        self._parse = tokenizer.tool_parser
        self._tools = tools
        self._pending = ""
        self._inside = False
        self.calls_made = 0
        self.done = False

    def feed(self, text: str, *, final: bool) -> tuple[str, list[ToolCall]]:
        content: list[str] = []
        calls: list[ToolCall] = []
        pending = self._pending + text
        while True:
            if not self._inside:
                at = pending.find(self._start)
                if at < 0:
                    keep = 0 if final else partial_suffix(pending, self._start)
                    content.append(pending[: len(pending) - keep])
                    pending = pending[len(pending) - keep :]
                    break
                content.append(pending[:at])
                pending = pending[at + len(self._start) :]
                self._inside = True
            else:
                at = pending.find(self._end)
                if at < 0:
                    if final:  # cut short: what was written is given back
                        content.append(self._start + pending)
                        pending = ""
                        self._inside = False
                    break
                parsed = self._calls(pending[:at])
                if parsed is None:
                    content.append(self._start + pending[: at + len(self._end)])
                else:
                    calls.extend(parsed)
                pending = pending[at + len(self._end) :]
                self._inside = False
                if self._limit and self.calls_made + len(calls) >= self._limit:
                    del calls[self._limit - self.calls_made :]
                    pending = ""
                    self.done = True
                    break
        self._pending = pending
        self.calls_made += len(calls)
        return "".join(content), calls

    def _calls(self, body: str) -> list[ToolCall] | None:
        """The call (or, for some formats, calls) in one block; None if the parser cannot read it."""
        try:
            parsed = self._parse(body, self._tools)
        except Exception:  # noqa: BLE001 - any parser failure: the text stays text
            return None
        found = parsed if isinstance(parsed, list) else [parsed]
        calls = []
        for call in found:
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                return None
            arguments = call.get("arguments", {})
            calls.append(ToolCall(call["name"], arguments if isinstance(arguments, str) else json.dumps(arguments)))
        return calls or None


def partial_suffix(text: str, marker: str) -> int:
    """How many characters at the end of ``text`` could begin ``marker``."""
    for length in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-length:]):
            return length
    return 0
