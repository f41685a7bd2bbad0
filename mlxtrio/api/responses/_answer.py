"""A generation as a Response object, or as the Responses API's stream of events.

The stream opens with ``response.created`` and ``response.in_progress``;
each output item (the model's reasoning, its message, each function call)
is ``output_item.added``, its content part's ``added``, its deltas, their
``done``, and ``output_item.done``, one item at a time; it ends with
``response.completed``, or ``response.incomplete`` where the output reached
its token limit, carrying the whole response. A failure after the 200 is an
``error`` event, which says what went wrong as the API's errors do, then
``response.failed``. Every event has its ``sequence_number``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence

import attrs
import msgspec

from ... import _protocol as p
from ..._errors import ErrorKind, ServerError
from .._errors import STATUS
from .._generation import Collected, Usage
from ._items import item_id

__all__ = ["ResponseAnswer", "count_object"]

_json = msgspec.json.Encoder()


def count_object(tokens: int) -> dict:
    return {"object": "response.input_tokens", "input_tokens": tokens}


def _top(entry: p.TokenLogprob) -> dict:
    return {"token": entry.token, "logprob": entry.logprob, "bytes": list(entry.token_bytes)}


def _logprobs(entries: Sequence[p.TokenLogprob]) -> list[dict]:
    """As a text part lists them."""
    return [{**_top(entry), "top_logprobs": [_top(other) for other in entry.top]} for entry in entries]


def _delta_logprobs(entries: Sequence[p.TokenLogprob]) -> list[dict]:
    """As a text delta event lists them."""
    return [
        {"token": entry.token, "logprob": entry.logprob, "top_logprobs": [{"token": other.token, "logprob": other.logprob} for other in entry.top]}
        for entry in entries
    ]


def _text_part(text: str, logprobs: list[dict]) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}


def _usage(usage: Usage) -> dict:
    """OpenAI's usage; reasoning tokens as the worker counted them (those generated inside a think block)."""
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def _failure(error: ServerError) -> dict:
    """A Response's ``error``: its codes name server-side failures only."""
    return {"code": "rate_limit_exceeded" if error.kind is ErrorKind.OVERLOADED else "server_error", "message": error.message}


@attrs.define(eq=False, kw_only=True)
class ResponseAnswer:
    """One response: built whole from a collected generation, or streamed item by item as its Deltas come."""

    # The response object's fields that come from the request (model, instructions, tools, ...).
    echo: dict
    logprobs: bool
    # The namespace of each function in one, which its calls name.
    namespaces: dict[str, str] = attrs.Factory(dict)
    id: str = attrs.Factory(lambda: "resp_" + secrets.token_hex(24))
    created_at: int = attrs.Factory(lambda: int(time.time()))
    # The whole response once it is known (completed, incomplete or failed): what the store keeps.
    final: dict | None = None
    _sequence: int = 0
    _output: list[dict] = attrs.Factory(list)
    # The reasoning or message item being streamed, and its text so far.
    _open: dict | None = None
    _parts: list[str] = attrs.Factory(list)
    _open_logprobs: list[dict] = attrs.Factory(list)
    # Log probabilities of tokens whose text has not come yet.
    _pending: list[p.TokenLogprob] = attrs.Factory(list)
    _finish: str | None = None

    def _response(self, status: str, output: list[dict], usage: dict | None, **fields: object) -> dict:
        done = status in ("completed", "incomplete", "failed")
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "completed_at": int(time.time()) if done else None,
            "error": None,
            "incomplete_details": None,
            **self.echo,
            "output": output,
            # Not nullable: left out until it is known.
            **({"usage": usage} if usage is not None else {}),
            **fields,
        }

    def _ended(self, output: list[dict], usage: Usage | None, finish: str | None) -> dict:
        incomplete = finish == "length"
        details = {"incomplete_details": {"reason": "max_output_tokens"}} if incomplete else {}
        self.final = self._response(
            "incomplete" if incomplete else "completed", output, None if usage is None else _usage(usage), **details
        )
        return self.final

    # -- the whole response

    def response(self, collected: Collected) -> dict:
        last = collected.lasts[0]
        incomplete = last.finish_reason == "length"
        output: list[dict] = []
        reasoning = collected.reasonings[0]
        if reasoning:
            output.append(_reasoning_item([_reasoning_part(reasoning)], "incomplete" if incomplete and not collected.texts[0] else "completed"))
        text, calls = collected.texts[0], collected.tool_calls[0]
        # A message where there is text, or nothing else (as a stream opens one).
        if text or not (calls or reasoning):
            logprobs = _logprobs(collected.logprobs[0]) if self.logprobs else []
            output.append(_message_item([_text_part(text, logprobs)], "incomplete" if incomplete else "completed"))
        output.extend(_call_item(call, self.namespaces) for call in calls)
        return self._ended(output, collected.usage, last.finish_reason)

    # -- the stream

    def _event(self, kind: str, **fields: object) -> bytes:
        payload = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + _json.encode(payload) + b"\n\n"

    def opening(self, prompt_tokens: int) -> bytes:
        return self._event("response.created", response=self._response("in_progress", [], None)) + self._event(
            "response.in_progress", response=self._response("in_progress", [], None)
        )

    def _add(self, item: dict, part: dict | None) -> bytes:
        index = len(self._output)
        events = self._event("response.output_item.added", output_index=index, item=item)
        if part is not None:
            self._open, self._parts, self._open_logprobs = item, [], []
            events += self._event("response.content_part.added", item_id=item["id"], output_index=index, content_index=0, part=part)
        return events

    def _close(self, status: str = "completed") -> bytes:
        """The open reasoning or message item's done events, and the item in the output."""
        item = self._open
        if item is None:
            return b""
        self._open = None
        text, index = "".join(self._parts), len(self._output)
        where = {"item_id": item["id"], "output_index": index, "content_index": 0}
        if item["type"] == "reasoning":
            part = _reasoning_part(text)
            events = self._event("response.reasoning_text.done", **where, text=text)
        else:
            part = _text_part(text, self._open_logprobs)
            events = self._event("response.output_text.done", **where, text=text, logprobs=self._open_logprobs)
        done = {**item, "content": [part], "status": status}
        events += self._event("response.content_part.done", **where, part=part)
        self._output.append(done)
        return events + self._event("response.output_item.done", output_index=index, item=done)

    def _opened(self, kind: str) -> bytes:
        """The item that the next text goes to, opened (closing another) if it is not open yet."""
        if self._open is not None and self._open["type"] == kind:
            return b""
        events = self._close()
        if kind == "reasoning":
            return events + self._add(_reasoning_item([], "in_progress"), _reasoning_part(""))
        return events + self._add(_message_item([], "in_progress"), _text_part("", []))

    def _call(self, call: p.ToolCall) -> bytes:
        events = self._close()
        index = len(self._output)
        item = {**_call_item(call, self.namespaces), "arguments": "", "status": "in_progress"}
        events += self._add(item, None)
        events += self._event("response.function_call_arguments.delta", item_id=item["id"], output_index=index, delta=call.arguments)
        events += self._event(
            "response.function_call_arguments.done", item_id=item["id"], name=call.name, output_index=index, arguments=call.arguments
        )
        done = {**item, "arguments": call.arguments, "status": "completed"}
        self._output.append(done)
        return events + self._event("response.output_item.done", output_index=index, item=done)

    def delta(self, choice: int, delta: p.Delta) -> bytes:
        events = b""
        if self.logprobs:
            # A token's text may come in a later delta (held back while it could start a stop string or a call).
            self._pending.extend(delta.logprobs)
            if not delta.text and (delta.reasoning or delta.tool_calls):
                self._pending.clear()
        if delta.reasoning:
            events += self._opened("reasoning")
            self._parts.append(delta.reasoning)
            where = {"item_id": self._open["id"], "output_index": len(self._output), "content_index": 0}  # type: ignore[index]
            events += self._event("response.reasoning_text.delta", **where, delta=delta.reasoning)
        if delta.text:
            events += self._opened("message")
            self._parts.append(delta.text)
            self._open_logprobs.extend(_logprobs(self._pending))
            where = {"item_id": self._open["id"], "output_index": len(self._output), "content_index": 0}  # type: ignore[index]
            events += self._event("response.output_text.delta", **where, delta=delta.text, logprobs=_delta_logprobs(self._pending))
            self._pending.clear()
        for call in delta.tool_calls:
            events += self._call(call)
        if delta.finish_reason is not None:
            self._finish = delta.finish_reason
        return events

    def closing(self, usage: Usage | None) -> bytes:
        # A response always has its message, if only an empty one.
        events = b"" if self._output or self._open is not None else self._opened("message")
        events += self._close("incomplete" if self._finish == "length" else "completed")
        final = self._ended(list(self._output), usage, self._finish)
        return events + self._event(f"response.{final['status']}", response=final)

    def keepalive(self) -> bytes:
        # The Responses API has no ping event; every SSE reader skips a comment (as on the OpenAI surface).
        return b": keep-alive\n\n"

    def error(self, error: ServerError) -> bytes:
        """The error event, then ``response.failed`` with the output so far: an item cut short is incomplete, with no done events."""
        output = list(self._output)
        if self._open is not None:
            text = "".join(self._parts)
            part = _text_part(text, self._open_logprobs) if self._open["type"] == "message" else _reasoning_part(text)
            output.append({**self._open, "content": [part], "status": "incomplete"})
        events = self._event("error", code=error.code or str(STATUS[error.kind]), message=error.message, param=error.param)
        self.final = self._response("failed", output, None, error=_failure(error))
        return events + self._event("response.failed", response=self.final)


def _reasoning_part(text: str) -> dict:
    return {"type": "reasoning_text", "text": text}


def _reasoning_item(parts: list[dict], status: str) -> dict:
    return {"id": item_id("reasoning"), "type": "reasoning", "summary": [], "content": parts, "status": status}


def _message_item(parts: list[dict], status: str) -> dict:
    return {"id": item_id("message"), "type": "message", "role": "assistant", "content": parts, "status": status}


def _call_item(call: p.ToolCall, namespaces: dict[str, str]) -> dict:
    item = {
        "id": item_id("function_call"),
        "type": "function_call",
        "call_id": "call_" + secrets.token_hex(12),
        "name": call.name,
        "arguments": call.arguments,
        "status": "completed",
    }
    if call.name in namespaces:
        item["namespace"] = namespaces[call.name]
    return item
