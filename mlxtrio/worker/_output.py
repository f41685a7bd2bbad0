"""A sequence's output side: its tokens become the deltas the worker sends.

Both engines hand each generated token to the sequence's ``SequenceOutput``,
which detokenizes it (a streaming detokenizer of its own), splits the
model's thinking from its text (``_reasoning.py``), holds back text that may
be the start of a stop string, splits tool calls out of the text
when the request has tools, gathers log probabilities when it asked for
them, counts tokens, and says what to send: a ``Delta``, or nothing yet.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import mlx.core as mx

from .._protocol import Delta, Generate, SamplingParams, TokenLogprob, ToolCall
from ._grammar import GrammarProcessor
from ._mlx_lm import detokenizer, opens_thinking
from ._reasoning import ReasoningSplitter
from ._sampling import Processor
from ._token_pieces import TokenPieces
from ._tools import ToolCallExtractor

__all__ = ["SequenceOutput", "new_output"]

# OpenAI's floor for a token the request's constraints rule out: JSON has no -inf (it would go out as null).
_LOGPROB_FLOOR = -9999.0


@attrs.define(eq=False)
class SequenceOutput:
    """One request's output side: detokenizer, stop strings, tool calls, log probabilities, counts."""

    request_id: int
    params: SamplingParams
    # The model's tokens' texts and bytes, for log probabilities.
    pieces: TokenPieces
    detokenizer: Any
    prompt_tokens: int
    cached_tokens: int = 0
    completion_tokens: int = 0
    # Text not sent yet because it might be the start of a stop string.
    held: str = ""
    # Log probabilities of tokens not yet sent with a delta.
    pending_logprobs: list[TokenLogprob] = attrs.Factory(list)
    # Tool calls parsed out of the text, when the request has tools.
    tools: ToolCallExtractor | None = None
    # The sequence's grammar, when it has one: a failure of it midway ends the sequence with an error.
    grammar: GrammarProcessor | None = None
    # An echoing completion's prompt text and its tokens' log probabilities, until its first delta carries them.
    echo: str | None = None
    echo_logprobs: tuple[TokenLogprob, ...] = ()
    # The stop string that ended the sequence, once one has.
    stop_string: str | None = None
    # Splits the model's thinking from its text, where the model has think markers; and thinking not sent yet.
    reasoning: ReasoningSplitter | None = None
    pending_reasoning: str = ""
    # Generated tokens that were thinking: inside a think block before or after their text (the markers' own included).
    reasoning_tokens: int = 0
    # A prompt with images: the prompt cache's key for it (its image tokens named by their pixels); None: its tokens.
    cache_key: list[int] | None = None
    # Its images' shift of multimodal rotary positions (worker/_vision/_positions.py), 0 where none.
    position_shift: int = 0

    def accept(self, token: int | None, finish_reason: str | None, logprobs: mx.array | None = None) -> Delta | None:
        """Take one generated token (None: no token, just the end), with the log probabilities it
        was sampled from, and say what to send."""
        if token is not None:
            if self.params.logprobs:
                self.pending_logprobs.append(self._logprob(token, logprobs))
            self.completion_tokens += 1
            self.detokenizer.add_token(token)
            self._take(self.detokenizer.last_segment, final=False)
            text, stopped = self._release(final=False)
            if stopped:
                return self._delta(text, "stop")
            if self.completion_tokens >= self.params.max_tokens:
                finish_reason = "length"
        else:
            text = ""
        if finish_reason is None:
            return self._delta(text, None)
        self.detokenizer.finalize()
        self._take(self.detokenizer.last_segment, final=True)
        rest, stopped = self._release(final=True)
        return self._delta(text + rest, "stop" if stopped else finish_reason)

    def _take(self, segment: str, *, final: bool) -> None:
        """The detokenizer's new text: its reasoning to go out as it is, its text to be looked through for stop strings."""
        if self.reasoning is None:
            self.held += segment
            return
        before = self.reasoning.inside
        reasoning, text = self.reasoning.feed(segment, final=final)
        if not final and (before or self.reasoning.inside):
            self.reasoning_tokens += 1
        self.pending_reasoning += reasoning
        self.held += text

    def _logprob(self, token: int, logprobs: mx.array) -> TokenLogprob:
        """The token's log probability and the top alternatives the request asked for."""
        params = self.params
        pieces = self.pieces
        top: tuple[TokenLogprob, ...] = ()
        if params.top_logprobs > 0:
            ids = mx.argpartition(-logprobs, params.top_logprobs - 1)[: params.top_logprobs]
            values = logprobs[ids]
            pairs = sorted(zip(ids.tolist(), values.tolist()), key=lambda pair: -pair[1])
            top = tuple(pieces.logprob(tid, max(value, _LOGPROB_FLOOR)) for tid, value in pairs)
        return pieces.logprob(token, max(float(logprobs[token].item()), _LOGPROB_FLOOR), top, first=self.completion_tokens == 0)

    def _release(self, *, final: bool) -> tuple[str, bool]:
        """Text safe to send now, and whether a stop string ended the sequence.

        Stop strings may span tokens: text that could still be the start of
        one is held back, and a stop string itself is never sent.
        """
        held = self.held
        stops = self.params.stop
        if stops:
            found = [(index, stop) for stop in stops if (index := held.find(stop)) >= 0]
            if found:
                # The one that starts first (of those starting there, the first listed) ends the text.
                at, self.stop_string = min(found, key=lambda pair: pair[0])
                self.held = ""
                return held[:at], True
        if final or not stops:
            self.held = ""
            return held, False
        keep = max(len(stop) for stop in stops) - 1
        cut = max(0, len(held) - keep)
        self.held = held[cut:]
        return held[:cut], False

    def _delta(self, text: str, finish_reason: str | None) -> Delta | None:
        """What to send, or None while there is nothing (text held back, no end yet)."""
        calls: tuple[ToolCall, ...] = ()
        if self.tools is not None:
            text, found = self.tools.feed(text, final=finish_reason is not None)
            calls = tuple(found)
            if self.tools.done or (finish_reason == "stop" and self.tools.calls_made):
                finish_reason = "tool_calls"
        reasoning, self.pending_reasoning = self.pending_reasoning, ""
        if not text and not calls and not reasoning and finish_reason is None and self.echo is None:
            return None
        logprobs = tuple(self.pending_logprobs)
        self.pending_logprobs.clear()
        echoed = 0
        if self.echo is not None:
            # Ahead of what stop strings and tool calls were looked for in: the prompt is not output.
            echoed, text, logprobs = len(self.echo), self.echo + text, self.echo_logprobs + logprobs
            self.echo, self.echo_logprobs = None, ()
        error = param = None
        if finish_reason is not None and self.grammar is not None and self.grammar.error is not None:
            # Its output ended where the grammar failed: not valid, and not to pass for it.
            param = self.params.grammar.param
            error = f"{param}: enforcing the schema failed midway: {self.grammar.error}"
        return Delta(
            self.request_id, text, self.prompt_tokens, self.completion_tokens, finish_reason, self.cached_tokens, logprobs, calls,
            error, param, echoed, reasoning, self.stop_string if finish_reason is not None else None, self.reasoning_tokens,
        )


def new_output(
    tokenizer: Any,
    pieces: TokenPieces,
    request: Generate,
    params: SamplingParams,
    prompt: list[int],
    cached: int,
    processors: list[Processor],
    *,
    parse_tools: bool,
) -> SequenceOutput:
    """The output side of ``request``'s sequence, ``cached`` of its ``prompt`` tokens from the prompt cache;
    ``parse_tools``: whether the model calls tools in a format its tokenizer knows."""
    # A detokenizer of its own, as a reset copy of the tokenizer's: building
    # one anew converts the whole vocabulary, and the worker admits requests
    # one after another.
    sequence = SequenceOutput(request.request_id, params, pieces, detokenizer(tokenizer), len(prompt), cached)
    sequence.grammar = next((each for each in processors if isinstance(each, GrammarProcessor)), None)
    start, end = getattr(tokenizer, "think_start", None), getattr(tokenizer, "think_end", None)
    if start and end and request.split_reasoning:
        # A grammar governs the whole output, which is then the answer, even where the prompt opened a think block.
        inside = params.grammar is None and opens_thinking(tokenizer, prompt)
        sequence.reasoning = ReasoningSplitter(start, end, inside=inside)
    if request.parse_tool_calls and parse_tools:
        sequence.tools = ToolCallExtractor(tokenizer, json.loads(request.tools) if request.tools else None, limit=request.max_tool_calls)
    return sequence
