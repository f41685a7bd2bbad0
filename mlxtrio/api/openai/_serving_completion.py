"""POST /v1/completions: the request as a GenerationRequest, and its Deltas as a text completion or its chunks."""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import ClassVar

import attrs
from quart import Response

from ... import _protocol as p
from .._common import RequestLimits, ServerState
from .._generation import Collected, GenerationRequest, respond
from ._schemas import CompletionRequest, decode_request
from ._serving import OpenAIAnswer, sampling_params, sse, usage_object

__all__ = ["TextCompletion", "completions"]


async def completions(state: ServerState, body: bytes) -> Response:
    completion = decode_request(body, CompletionRequest, state.limits)
    wants_logprobs = completion.logprobs is not None
    answer = TextCompletion(**OpenAIAnswer.heading(completion, "cmpl-"), logprobs=wants_logprobs, offsets=[0] * completion.n)
    return await respond(state, generation_request(completion, state.limits), answer)


def generation_request(completion: CompletionRequest, limits: RequestLimits) -> GenerationRequest:
    wanted = completion.logprobs is not None
    return GenerationRequest(
        model=completion.model,
        params=sampling_params(completion, limits, grammar=None, logprobs=wanted, top_logprobs=completion.logprobs or 0),
        prompt=completion.prompt,
        n=completion.n,
        stream=completion.stream,
        keep_alive=completion.keep_alive_seconds(),
    )


def _name(entry: p.TokenLogprob) -> str:
    """A token as the completions API names it: its text, or ``bytes:\\xe6\\x97`` (OpenAI's spelling)
    for one that holds part of a character, whose text alone would read U+FFFD."""
    try:
        return entry.token_bytes.decode("utf-8") if entry.token_bytes else entry.token
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{byte:02x}" for byte in entry.token_bytes)


def _alternatives(entry: p.TokenLogprob) -> dict[str, float | None]:
    """The alternatives keyed by name; two tokens of one name (a vocabulary may spell a text twice)
    are told apart by id, vLLM's ``token_id:`` spelling, so that none hides another."""
    top: dict[str, float | None] = {}
    for alternative in entry.top:
        name = _name(alternative)
        top[f"token_id:{alternative.id}" if name in top else name] = alternative.logprob
    return top


def _logprobs(entries: Sequence[p.TokenLogprob], offset: int) -> dict:
    """The completions API's older shape: parallel lists, and each token's offset in the text (in characters:
    a token that holds part of a character is at that character)."""
    offsets = []
    characters = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for entry in entries:
        offsets.append(offset)
        offset += len(characters.decode(entry.token_bytes))
    return {
        "tokens": [_name(entry) for entry in entries],
        "token_logprobs": [entry.logprob for entry in entries],
        "top_logprobs": [_alternatives(entry) for entry in entries],
        "text_offset": offsets,
    }


@attrs.define(eq=False, kw_only=True)
class TextCompletion(OpenAIAnswer):
    """One text completion: its chunks as they come, or the whole response."""

    chunk_object: ClassVar[str] = "text_completion"
    # Streamed: where each choice's next chunk starts in its text.
    _offsets: list[int]

    def _choice(self, index: int, text: str, finish_reason: str | None, logprobs: Sequence[p.TokenLogprob], offset: int) -> dict:
        return {
            "text": text,
            "index": index,
            "logprobs": _logprobs(logprobs, offset) if self.logprobs else None,
            "finish_reason": finish_reason,
        }

    def delta(self, choice: int, delta: p.Delta) -> bytes:
        offset = self._offsets[choice]
        self._offsets[choice] = offset + len(delta.text)
        return sse(self.chunk([self._choice(choice, delta.text, delta.finish_reason, delta.logprobs, offset)]))

    def response(self, collected: Collected) -> dict:
        choices = [
            self._choice(index, text, last.finish_reason, logprobs, 0)
            for index, (text, logprobs, last) in enumerate(zip(collected.texts, collected.logprobs, collected.lasts, strict=True))
        ]
        return {**self.chunk(choices), "usage": usage_object(collected.usage)}
