"""An answer of /api/chat or /api/generate, whole or as Ollama's stream: one JSON object per line (NDJSON).

Each line is a progress object (``done: false``) with the text, thinking or
tool calls of a step; the last says ``done: true``, why (``done_reason``),
and the request's counts and durations in nanoseconds, from the request's own
record (``api/_observe.py``): ``total_duration`` since it arrived,
``load_duration`` waiting for its model to load, ``prompt_eval_duration``
from then to the first token (the worker's queue and the prefill),
``eval_duration`` from the first token to the last. A failure after the 200
is a line ``{"error": "..."}``, the last.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime

import attrs
import msgspec

from ... import _protocol as p
from ..._errors import ServerError
from .._generation import Collected, Usage
from .._observe import RequestRecord, current_record
from ._errors import ollama_error

__all__ = ["OllamaAnswer", "created_at", "request_durations", "tool_call_object"]

_json = msgspec.json.Encoder()


def _line(payload: dict) -> bytes:
    return _json.encode(payload) + b"\n"


def created_at() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def nanoseconds(seconds: float) -> int:
    """Ollama's durations are integer nanoseconds."""
    return max(0, round(seconds * 1e9))


def request_durations(record: RequestRecord, end: float) -> dict:
    """``total_duration`` since the request arrived, until ``end`` (``time.perf_counter``), and ``load_duration``,
    its wait for the model to load."""
    return {"total_duration": nanoseconds(end - record.started), "load_duration": nanoseconds(record.load_seconds)}


def tool_call_object(call: p.ToolCall) -> dict:
    """A call in Ollama's shape: its arguments an object (arguments that are something else are kept under one key)."""
    try:
        arguments = msgspec.json.decode(call.arguments)
    except msgspec.DecodeError:
        arguments = call.arguments
    return {"function": {"name": call.name, "arguments": arguments if isinstance(arguments, dict) else {"arguments": arguments}}}


def _logprob(entry: p.TokenLogprob) -> dict:
    return {"token": entry.token, "logprob": entry.logprob, "bytes": list(entry.token_bytes)}


def logprobs_list(entries: Sequence[p.TokenLogprob]) -> list[dict]:
    """Ollama's logprobs: each token's, with its alternatives where asked for."""
    return [{**_logprob(entry), "top_logprobs": [_logprob(alternative) for alternative in entry.top]} for entry in entries]


def done_reason(last: p.Delta | None) -> str:
    """Ollama's reasons: "length" where the token limit (or the context) ended it, "stop" otherwise."""
    return "length" if last is not None and last.finish_reason == "length" else "stop"


@attrs.define(eq=False, kw_only=True)
class OllamaAnswer:
    """One answer (n is always 1) of /api/chat (``chat``) or /api/generate."""

    model: str
    chat: bool
    record: RequestRecord
    # Whether the request asked for its tokens' log probabilities.
    logprobs: bool = False
    _last: p.Delta | None = None

    @classmethod
    def new(cls, model: str, *, chat: bool, logprobs: bool) -> OllamaAnswer:
        # The record itself: a stream's body runs where the request's context is gone.
        return cls(model=model, chat=chat, record=current_record(), logprobs=logprobs)

    def _object(
        self,
        text: str,
        *,
        thinking: str = "",
        calls: Sequence[p.ToolCall] = (),
        logprobs: Sequence[p.TokenLogprob] = (),
        done: bool = False,
    ) -> dict:
        payload: dict = {"model": self.model, "created_at": created_at()}
        if self.chat:
            message: dict = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            if calls:
                message["tool_calls"] = [tool_call_object(call) for call in calls]
            payload["message"] = message
        else:
            payload["response"] = text
            if thinking:
                payload["thinking"] = thinking
        if self.logprobs and logprobs:
            payload["logprobs"] = logprobs_list(logprobs)
        payload["done"] = done
        return payload

    def _final(self, payload: dict, usage: Usage | None) -> dict:
        record = self.record
        end = time.perf_counter()
        ready = record.ready_at if record.ready_at is not None else record.started + record.load_seconds
        first = record.first_token_at if record.first_token_at is not None else end
        payload.update(
            done_reason=done_reason(self._last),
            **request_durations(record, end),
            prompt_eval_count=0 if usage is None else usage.prompt_tokens,
            prompt_eval_duration=nanoseconds(first - ready),
            eval_count=0 if usage is None else usage.completion_tokens,
            eval_duration=nanoseconds(end - first),
        )
        return payload

    def response(self, collected: Collected) -> dict:
        (text,), (calls,), (last,), (thinking,), (logprobs,) = (
            collected.texts, collected.tool_calls, collected.lasts, collected.reasonings, collected.logprobs
        )  # fmt: skip
        self._last = last
        return self._final(self._object(text, thinking=thinking, calls=calls, logprobs=logprobs, done=True), collected.usage)

    # --- the stream

    def opening(self, prompt_tokens: int) -> bytes:
        return b""

    def keepalive(self) -> bytes:
        # An empty progress line: Ollama's clients parse every line as JSON, so a blank one would break them.
        return _line(self._object(""))

    def delta(self, choice: int, delta: p.Delta) -> bytes:
        if delta.finish_reason is not None:
            self._last = delta
        if not (delta.text or delta.reasoning or delta.tool_calls or (self.logprobs and delta.logprobs)):
            return b""
        return _line(self._object(delta.text, thinking=delta.reasoning, calls=delta.tool_calls, logprobs=delta.logprobs))

    def closing(self, usage: Usage | None) -> bytes:
        return _line(self._final(self._object("", done=True), usage))

    def error(self, error: ServerError) -> bytes:
        return _line(ollama_error(error))
