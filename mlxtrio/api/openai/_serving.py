"""What the OpenAI API's endpoints share in translating: sampling parameters, usage, tool calls, SSE and errors."""

from __future__ import annotations

import secrets
import time
from typing import ClassVar

import attrs
import msgspec

from ... import _protocol as p
from ..._errors import ServerError
from .._common import RequestLimits
from .._errors import openai_error
from .._generation import Usage
from ._schemas import CommonRequest

__all__ = ["OpenAIAnswer", "sampling_params", "sse", "tool_call_object", "usage_object"]

_json = msgspec.json.Encoder()
_DONE = b"data: [DONE]\n\n"
_KEEPALIVE = b": keep-alive\n\n"


def sse(payload: dict) -> bytes:
    return b"data: " + _json.encode(payload) + b"\n\n"


def sampling_params(
    request: CommonRequest, limits: RequestLimits, *, grammar: p.Grammar | None, logprobs: bool, top_logprobs: int
) -> p.SamplingParams:
    """The fields both endpoints take, as the worker samples by them (each endpoint spells its logprobs its own way)."""
    max_tokens = request.asked_max_tokens()
    return p.SamplingParams(
        grammar=grammar,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        max_tokens=limits.max_tokens if max_tokens is None else max_tokens,
        fit_context=max_tokens is None,
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        stop=tuple([request.stop] if isinstance(request.stop, str) else request.stop or ()),
        seed=request.seed,
        ignore_eos=request.ignore_eos,
        top_k=request.top_k or 0,
        min_p=request.min_p or 0.0,
        repetition_penalty=request.repetition_penalty or 0.0,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        logit_bias=tuple((int(token), bias) for token, bias in (request.logit_bias or {}).items()),
    )


def tool_call_object(call: p.ToolCall) -> dict:
    return {"id": "call_" + secrets.token_hex(12), "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def usage_object(usage: Usage) -> dict:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


@attrs.define(eq=False, kw_only=True)
class OpenAIAnswer:
    """What both endpoints' answers share: the id, time and model every chunk names, the usage chunk, ``[DONE]`` and the error event."""

    # A stream chunk's "object".
    chunk_object: ClassVar[str]

    id: str
    created: int
    model: str
    include_usage: bool
    # Whether the request asked for its tokens' log probabilities.
    logprobs: bool

    @staticmethod
    def heading(request: CommonRequest, id_prefix: str) -> dict:
        """The fields every answer takes from its request, and a fresh id and time."""
        return {
            "id": id_prefix + secrets.token_hex(12),
            "created": int(time.time()),
            "model": request.model,
            "include_usage": request.include_usage,
        }

    def chunk(self, choices: list[dict]) -> dict:
        chunk = {"id": self.id, "object": self.chunk_object, "created": self.created, "model": self.model, "choices": choices}
        if self.include_usage:
            # OpenAI's spec: with include_usage, every chunk before the usage chunk says "usage": null.
            chunk["usage"] = None
        return chunk

    def opening(self, prompt_tokens: int) -> bytes:
        return b""

    def closing(self, usage: Usage | None) -> bytes:
        if self.include_usage and usage is not None:
            return sse({**self.chunk([]), "usage": usage_object(usage)}) + _DONE
        return _DONE

    def error(self, error: ServerError) -> bytes:
        return sse(openai_error(error))

    def keepalive(self) -> bytes:
        # An SSE comment: every SSE reader skips it, and a proxy sees the connection is alive.
        return _KEEPALIVE
