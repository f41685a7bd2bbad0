"""POST /v1/completions: the request as a GenerationRequest, and its Deltas as a text completion or its chunks."""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import ClassVar

import attrs
import msgspec
from quart import Response

from ... import _protocol as p
from .._common import RequestLimits, ServerState
from .._decode import decode_request
from .._generation import Collected, GenerationRequest, Usage, respond
from ._schemas import CompletionRequest
from ._serving import OpenAIAnswer, sampling_params, sse, usage_object

__all__ = ["TextCompletion", "completions"]


async def completions(state: ServerState, body: bytes) -> Response:
    completion = decode_request(body, CompletionRequest, state.limits)
    prompts = completion.prompts()
    answer = TextCompletion(
        **OpenAIAnswer.heading(completion, "cmpl-"),
        logprobs=completion.logprobs is not None,
        candidates=completion.candidates,
        choices=completion.n,
        sequences=len(prompts) * completion.candidates,
    )
    return await respond(state, generation_request(completion, prompts, state.limits), answer)


def generation_request(completion: CompletionRequest, prompts: tuple[str | tuple[int, ...], ...], limits: RequestLimits) -> GenerationRequest:
    """Every prompt's candidates (best_of, or n) in one generation: one prompt text as ``prompt``, anything else as ``prompts``."""
    wanted = completion.logprobs is not None
    # best_of ranks its candidates by their log probabilities, asked for or not.
    ranked = completion.candidates > completion.n
    params = sampling_params(completion, limits, grammar=None, logprobs=wanted or ranked, top_logprobs=completion.logprobs or 0)
    one_text = len(prompts) == 1 and isinstance(prompts[0], str)
    return GenerationRequest(
        model=completion.model,
        params=msgspec.structs.replace(params, echo=bool(completion.echo)),
        prompt=prompts[0] if one_text else None,  # type: ignore[arg-type]
        prompts=() if one_text else prompts,
        n=len(prompts) * completion.candidates,
        stream=completion.stream,
        keep_alive=completion.keep_alive_seconds(),
        # A completion continues its prompt: thinking in it is text.
        split_reasoning=False,
    )


def _usage(lasts: Sequence[p.Delta], per_prompt: int) -> Usage:
    """Every prompt's tokens once, every sequence's completion (each prompt's ``per_prompt`` sequences share its prompt)."""
    groups = [lasts[start : start + per_prompt] for start in range(0, len(lasts), per_prompt)]
    return Usage(
        sum(group[0].prompt_tokens for group in groups),
        sum(last.completion_tokens for last in lasts),
        sum(max(last.cached_tokens for last in group) for group in groups),
    )


def _mean_logprob(entries: Sequence[p.TokenLogprob], last: p.Delta) -> float:
    """The generated tokens' mean log probability (an echoed prompt's come first, and do not count)."""
    generated = entries[len(entries) - last.completion_tokens :] if last.completion_tokens else ()
    if not generated:
        return float("-inf")
    return sum(entry.logprob or 0.0 for entry in generated) / len(generated)


def _name(entry: p.TokenLogprob) -> str:
    """A token as the completions API names it: its text, or ``bytes:\\xe6\\x97`` (OpenAI's spelling)
    for one that holds part of a character, whose text alone would read U+FFFD."""
    try:
        return entry.token_bytes.decode("utf-8") if entry.token_bytes else entry.token
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{byte:02x}" for byte in entry.token_bytes)


def _alternatives(entry: p.TokenLogprob) -> dict[str, float | None]:
    """The alternatives keyed by name, and the sampled token where it is not among them ("up to logprobs+1
    elements", as OpenAI's reference has it); two tokens of one name (a vocabulary may spell a text
    twice) are told apart by id, vLLM's ``token_id:`` spelling, so that none hides another."""
    top: dict[str, float | None] = {}
    alternatives = entry.top
    if all(alternative.id != entry.id for alternative in alternatives):
        alternatives = (*alternatives, entry)
    for alternative in alternatives:
        name = _name(alternative)
        top[f"token_id:{alternative.id}" if name in top else name] = alternative.logprob
    return top


@attrs.define
class _Offsets:
    """Where a sequence's tokens start in its text, in characters, counted from its tokens' own bytes
    (a token that holds part of a character is at that character), so that a stream, whose text may be
    held back behind a stop string, places them where the whole answer does."""

    at: int = 0
    _characters: codecs.IncrementalDecoder = attrs.Factory(lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))

    def place(self, entries: Sequence[p.TokenLogprob]) -> list[int]:
        offsets = []
        for entry in entries:
            offsets.append(self.at)
            self.at += len(self._characters.decode(entry.token_bytes))
        return offsets


def _logprobs(entries: Sequence[p.TokenLogprob], offsets: _Offsets) -> dict:
    """The completions API's older shape: parallel lists, and each token's offset in the text."""
    return {
        "tokens": [_name(entry) for entry in entries],
        "token_logprobs": [entry.logprob for entry in entries],
        # None for an echoed prompt's first token, as OpenAI gives it (nothing predicts it).
        "top_logprobs": [None if entry.logprob is None else _alternatives(entry) for entry in entries],
        "text_offset": offsets.place(entries),
    }


@attrs.define(eq=False, kw_only=True)
class TextCompletion(OpenAIAnswer):
    """One text completion: its chunks as they come, or the whole response.

    Sequences come ``candidates`` per prompt, in the prompts' order; each
    prompt returns ``choices`` (n) of them, as choice ``prompt index * n + i``:
    all of them (streamed, or without best_of), or the best by mean log probability.
    """

    chunk_object: ClassVar[str] = "text_completion"
    candidates: int
    choices: int
    sequences: int
    # Streamed: each sequence's token offsets so far, and its latest delta (for the usage).
    _offsets: list[_Offsets] = attrs.field(init=False)
    _lasts: list[p.Delta | None] = attrs.field(init=False)

    @_offsets.default
    def _at_the_start(self) -> list[_Offsets]:
        return [_Offsets() for _ in range(self.sequences)]

    @_lasts.default
    def _no_deltas(self) -> list[p.Delta | None]:
        return [None] * self.sequences

    def _choice(self, index: int, text: str, finish_reason: str | None, logprobs: Sequence[p.TokenLogprob], offsets: _Offsets) -> dict:
        return {
            "text": text,
            "index": index,
            "logprobs": _logprobs(logprobs, offsets) if self.logprobs else None,
            "finish_reason": finish_reason,
        }

    def delta(self, choice: int, delta: p.Delta) -> bytes:
        offsets = self._offsets[choice]
        self._lasts[choice] = delta
        if not delta.echoed:
            return sse(self.chunk([self._choice(choice, delta.text, delta.finish_reason, delta.logprobs, offsets)]))
        # The echoed prompt is the choice's first chunk, with its tokens' log probabilities.
        echoed, split = delta.echoed, delta.prompt_tokens if delta.logprobs else 0
        prompt = sse(self.chunk([self._choice(choice, delta.text[:echoed], None, delta.logprobs[:split], offsets)]))
        if len(delta.text) == echoed and delta.finish_reason is None and len(delta.logprobs) == split:
            return prompt
        rest = self._choice(choice, delta.text[echoed:], delta.finish_reason, delta.logprobs[split:], offsets)
        return prompt + sse(self.chunk([rest]))

    def closing(self, usage: Usage | None) -> bytes:
        # Every prompt's tokens, not the first's alone.
        return super().closing(None if usage is None else _usage(self._lasts, self.candidates))  # type: ignore[arg-type]

    def response(self, collected: Collected) -> dict:
        lasts, per_prompt = collected.lasts, self.candidates
        choices = []
        for number, start in enumerate(range(0, len(lasts), per_prompt)):
            group = range(start, start + per_prompt)
            if per_prompt > self.choices:
                group = sorted(group, key=lambda index: -_mean_logprob(collected.logprobs[index], lasts[index]))[: self.choices]
            choices.extend(
                self._choice(number * self.choices + rank, collected.texts[index], lasts[index].finish_reason, collected.logprobs[index], _Offsets())
                for rank, index in enumerate(group)
            )
        return {**self.chunk(choices), "usage": usage_object(_usage(lasts, per_prompt))}
