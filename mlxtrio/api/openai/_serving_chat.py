"""POST /v1/chat/completions: the request as a GenerationRequest, and its Deltas as a chat completion or its chunks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import attrs
import msgspec
from quart import Response

from ... import _protocol as p
from .._common import RequestLimits, ServerState
from .._decode import decode_request
from .._generation import Collected, GenerationRequest, respond
from .._images import ImageSource, ImageSources, parts_message
from .._structured import template_tools
from ._schemas import ChatCompletionRequest, ContentPart, Message, Tool
from ._serving import OpenAIAnswer, sampling_params, sse, tool_call_object, usage_object

__all__ = ["ChatCompletion", "chat_completions"]


async def chat_completions(state: ServerState, body: bytes) -> Response:
    chat = decode_request(body, ChatCompletionRequest, state.limits)
    answer = ChatCompletion(**OpenAIAnswer.heading(chat, "chatcmpl-"), logprobs=chat.logprobs, calls_so_far=[0] * chat.n)
    return await respond(state, generation_request(chat, state.limits), answer)


def generation_request(chat: ChatCompletionRequest, limits: RequestLimits) -> GenerationRequest:
    mode = chat.tool_mode()
    # tool_choice "none": the model is not told of the tools, so as not to call them.
    calls = mode not in (None, "none")
    sources = ImageSources()
    return GenerationRequest(
        model=chat.model,
        params=sampling_params(chat, limits, grammar=chat.grammar(limits), logprobs=chat.logprobs, top_logprobs=chat.top_logprobs or 0),
        messages=tuple(_chat_message(message, index, sources) for index, message in enumerate(chat.messages)),
        images=tuple(sources.found),
        n=chat.n,
        stream=chat.stream,
        keep_alive=chat.keep_alive_seconds(),
        tools=_tools_json(chat.tools) if calls and chat.tools else None,
        parse_tool_calls=calls,
        max_tool_calls=1 if chat.parallel_tool_calls is False else 0,
        forced_tool_choice=repr(chat.tool_choice) if chat.forces_tool_call else None,
        # Chat completions' wire has no place for thinking (yet): it stays in the content, as it always was.
        split_reasoning=False,
    )


def _part(part: ContentPart, where: str, sources: ImageSources) -> p.ContentPart:
    image = part.image
    if image is None:
        return p.ContentPart(text=part.text or "")
    return sources.part(ImageSource(where=where, url=image.url, detail=image.detail or "auto"))


def _chat_message(message: Message, index: int, sources: ImageSources) -> p.ChatMessage:
    content = message.content
    if content is None or isinstance(content, str):
        parts = [p.ContentPart(text=content or "")]
    else:
        parts = [_part(part, f"messages[{index}].content[{number}]", sources) for number, part in enumerate(content)]
    return parts_message(
        message.role,
        parts,
        joiner="",
        tool_calls=tuple(p.ToolCall(call.function.name, call.function.arguments, call.id) for call in message.tool_calls or ()),
        tool_call_id=message.tool_call_id,
    )


def _tools_json(tools: list[Tool]) -> str:
    return template_tools([msgspec.structs.asdict(tool.function) for tool in tools])


def _logprob(entry: p.TokenLogprob) -> dict:
    return {"token": entry.token, "logprob": entry.logprob, "bytes": list(entry.token_bytes)}


def _logprobs(entries: Sequence[p.TokenLogprob]) -> dict:
    return {
        "content": [{**_logprob(entry), "top_logprobs": [_logprob(alternative) for alternative in entry.top]} for entry in entries],
        "refusal": None,
    }


@attrs.define(eq=False, kw_only=True)
class ChatCompletion(OpenAIAnswer):
    """One chat completion: its chunks as they come, or the whole response."""

    chunk_object: ClassVar[str] = "chat.completion.chunk"
    # Streamed: each choice's tool calls are numbered from 0.
    _calls_so_far: list[int]

    def _choice_chunk(self, index: int, delta: dict, finish_reason: str | None, logprobs: Sequence[p.TokenLogprob] = ()) -> dict:
        return self.chunk(
            [{"index": index, "delta": delta, "logprobs": _logprobs(logprobs) if self.logprobs else None, "finish_reason": finish_reason}]
        )

    def opening(self, prompt_tokens: int) -> bytes:
        # A role chunk per choice, sent with the 200.
        choices = range(len(self._calls_so_far))
        return b"".join(sse(self._choice_chunk(index, {"role": "assistant", "content": ""}, None)) for index in choices)

    def delta(self, choice: int, delta: p.Delta) -> bytes:
        content: dict = {"content": delta.text} if delta.text else {}
        if delta.tool_calls:
            before = self._calls_so_far[choice]
            content["tool_calls"] = [{"index": before + number, **tool_call_object(call)} for number, call in enumerate(delta.tool_calls)]
            self._calls_so_far[choice] = before + len(delta.tool_calls)
        return sse(self._choice_chunk(choice, content, delta.finish_reason, delta.logprobs))

    def response(self, collected: Collected) -> dict:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": index,
                    "message": _message(text, calls),
                    "logprobs": _logprobs(logprobs) if self.logprobs else None,
                    "finish_reason": last.finish_reason,
                }
                for index, (text, calls, logprobs, last) in enumerate(
                    zip(collected.texts, collected.tool_calls, collected.logprobs, collected.lasts, strict=True)
                )
            ],
            "usage": usage_object(collected.usage),
        }


def _message(text: str, calls: list[p.ToolCall]) -> dict:
    if not calls:
        return {"role": "assistant", "content": text, "refusal": None}
    return {"role": "assistant", "content": text or None, "refusal": None, "tool_calls": [tool_call_object(call) for call in calls]}
