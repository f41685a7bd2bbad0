"""A Message, whole or as Anthropic's stream of events, from one sequence's Deltas.

A stream is ``message_start`` at once (the 200 goes out when the worker
admits the request, which tells the prompt's tokens; how many of them the
prompt cache held comes in ``message_delta``), a ``ping`` whenever it has been
silent for ``Config.stream_keepalive`` (a long prefill); then each content block
as ``content_block_start``, its deltas and ``content_block_stop``; then
``message_delta`` (stop reason, usage) and ``message_stop``. A failure
after the 200 is an ``error`` event, the last.

A thinking block's ``signature`` is the base64 SHA-256 of its thinking
text: Anthropic's clients require one and send it back with the block;
mlxtrio checks no signature, and takes thinking sent back as it is.
"""

from __future__ import annotations

import base64
import hashlib
import secrets

import attrs
import msgspec

from ... import _protocol as p
from ..._errors import ServerError
from .._generation import Collected, Usage
from .._observe import current_record
from ._errors import anthropic_error

__all__ = ["MessageAnswer"]

_json = msgspec.json.Encoder()


def event(kind: str, payload: dict) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + _json.encode({"type": kind, **payload}) + b"\n\n"


_PING = event("ping", {})


def _signature(digest: hashlib._Hash) -> str:
    return base64.b64encode(digest.digest()).decode()


def tool_use_block(call: p.ToolCall) -> dict:
    """A call as a tool_use block: its input the arguments' JSON object."""
    try:
        arguments = msgspec.json.decode(call.arguments)
    except msgspec.DecodeError:
        arguments = call.arguments
    # Anthropic's input is an object; arguments that are something else are kept under one key.
    return {"type": "tool_use", "id": "toolu_" + secrets.token_hex(12), "name": call.name, "input": arguments if isinstance(arguments, dict) else {"arguments": arguments}}


def stop_reason(last: p.Delta | None, *, called: bool) -> str:
    finish = None if last is None else last.finish_reason
    if finish == "tool_calls" or (called and finish == "stop"):
        return "tool_use"
    if finish == "length":
        return "max_tokens"
    if last is not None and last.stop_string is not None:
        return "stop_sequence"
    return "end_turn"


def usage_object(usage: Usage | None) -> dict:
    """Anthropic's usage: input_tokens are the prompt's tokens the prompt cache did not hold."""
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    return {
        "input_tokens": usage.prompt_tokens - usage.cached_tokens,
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.cached_tokens,
    }


@attrs.define(eq=False, kw_only=True)
class MessageAnswer:
    """One Message (n is always 1): the whole response, or its stream's events as they come."""

    id: str
    model: str
    # The request's id, for a stream's error event (sent where the request's context is gone).
    request_id: str
    # thinking.display "omitted": the blocks, without their text.
    omit_thinking: bool
    # The stream so far: the open block's type and index, the thinking so far's digest.
    _open: str | None = None
    _blocks: int = 0
    _thinking: hashlib._Hash = attrs.Factory(hashlib.sha256)
    _called: bool = False
    _last: p.Delta | None = None

    @classmethod
    def new(cls, model: str, *, omit_thinking: bool) -> MessageAnswer:
        return cls(id="msg_" + secrets.token_hex(12), model=model, request_id=current_record().request_id, omit_thinking=omit_thinking)

    def _message(self, content: list[dict], stop: str | None, stop_sequence: str | None, usage: Usage | None) -> dict:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": stop_sequence,
            "usage": usage_object(usage),
        }

    def response(self, collected: Collected) -> dict:
        (text,), (calls,), (last,) = collected.texts, collected.tool_calls, collected.lasts
        reasoning = collected.reasonings[0]
        content: list[dict] = []
        if reasoning:
            shown = "" if self.omit_thinking else reasoning
            content.append({"type": "thinking", "thinking": shown, "signature": _signature(hashlib.sha256(reasoning.encode()))})
        if text:
            content.append({"type": "text", "text": text})
        content.extend(tool_use_block(call) for call in calls)
        return self._message(content, stop_reason(last, called=bool(calls)), last.stop_string, collected.usage)

    # --- the stream

    def opening(self, prompt_tokens: int) -> bytes:
        # How much of the prompt the cache held is known later: message_delta's usage says.
        return event("message_start", {"message": self._message([], None, None, Usage(prompt_tokens, 0, 0))})

    def keepalive(self) -> bytes:
        return _PING

    def _close(self) -> bytes:
        """The open block's end: a thinking block's signature first."""
        if self._open is None:
            return b""
        out = b""
        index = self._blocks - 1
        if self._open == "thinking":
            out += event("content_block_delta", {"index": index, "delta": {"type": "signature_delta", "signature": _signature(self._thinking)}})
            self._thinking = hashlib.sha256()
        self._open = None
        return out + event("content_block_stop", {"index": index})

    def _block(self, block: dict) -> bytes:
        """A new block after the open one (closed), started."""
        out = self._close()
        self._blocks += 1
        self._open = block["type"]
        return out + event("content_block_start", {"index": self._blocks - 1, "content_block": block})

    def delta(self, choice: int, delta: p.Delta) -> bytes:
        out = b""
        if delta.reasoning:
            if self._open != "thinking":
                out += self._block({"type": "thinking", "thinking": "", "signature": ""})
            self._thinking.update(delta.reasoning.encode())
            if not self.omit_thinking:
                out += event("content_block_delta", {"index": self._blocks - 1, "delta": {"type": "thinking_delta", "thinking": delta.reasoning}})
        if delta.text:
            if self._open != "text":
                out += self._block({"type": "text", "text": ""})
            out += event("content_block_delta", {"index": self._blocks - 1, "delta": {"type": "text_delta", "text": delta.text}})
        for call in delta.tool_calls:
            block = tool_use_block(call)
            out += self._block({**block, "input": {}})
            partial = {"type": "input_json_delta", "partial_json": _json.encode(block["input"]).decode()}
            out += event("content_block_delta", {"index": self._blocks - 1, "delta": partial}) + self._close()
            self._called = True
        if delta.finish_reason is not None:
            self._last = delta
        return out

    def closing(self, usage: Usage | None) -> bytes:
        last = self._last
        stop = {"stop_reason": stop_reason(last, called=self._called), "stop_sequence": None if last is None else last.stop_string}
        return (
            self._close()
            + event("message_delta", {"delta": stop, "usage": usage_object(usage)})
            + event("message_stop", {})
        )

    def error(self, error: ServerError) -> bytes:
        return event("error", anthropic_error(error, self.request_id))
