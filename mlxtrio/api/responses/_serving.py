"""POST /v1/responses and /v1/responses/input_tokens: a request as a GenerationRequest, and its answer kept where asked.

A conversation is the stored history of ``previous_response_id`` (its
input and output items), then this request's input; ``instructions`` apply
to this request alone, as at OpenAI. With ``store`` (the default) the
response, its input items and the conversation so far are kept under the
API key's owner before the response (or a stream's last event) goes out, so
that a client may continue from it at once.
"""

from __future__ import annotations

import attrs
import msgspec
from quart import Response

from ... import _protocol as p
from ..._errors import ErrorKind, ServerError
from .._auth import api_key_owner
from .._common import RequestLimits, ServerState, json_response
from .._decode import decode_request
from .._generation import Generation, GenerationRequest, count_prompt_tokens
from .._images import ImageSources
from .._structured import template_tools
from ._answer import ResponseAnswer, count_object
from ._items import chat_messages, input_items
from ._schemas import CountRequest, CreateRequest, Tool
from ._store import ResponseStore

__all__ = ["count_input_tokens", "create_response", "not_found"]


def not_found(response_id: str, param: str | None = None) -> ServerError:
    return ServerError(ErrorKind.NOT_FOUND, f"Response with id {response_id[:100]!r} not found.", param=param)


def _tools_json(tools: list[Tool]) -> str | None:
    if not tools:
        return None
    return template_tools([{"name": tool.name, "description": tool.description or "", "parameters": tool.parameters or {}} for tool in tools])


async def _history(store: ResponseStore, previous_response_id: str | None, *, body_bytes: int, max_body_bytes: int) -> list[dict]:
    """The conversation so far, held with this request's body to the body's bound: a chain of turns would otherwise
    grow past what any one request may send, and each turn would load, convert and send all of it."""
    if previous_response_id is None:
        return []
    stored = await store.get(api_key_owner(), previous_response_id)
    if stored is None:
        raise not_found(previous_response_id, "previous_response_id")
    if stored.history_bytes + body_bytes > max_body_bytes:
        raise ServerError(
            ErrorKind.INVALID_REQUEST,
            f"the conversation so far ({stored.history_bytes} bytes) and this request ({body_bytes} bytes) are more than "
            f"{max_body_bytes} bytes (MLX_MAX_BODY_BYTES); send a shorter conversation in full, without previous_response_id",
            param="previous_response_id",
        )
    return stored.history


def _generation_request(
    asked: CreateRequest | CountRequest,
    history: list[dict],
    items: list[dict],
    *,
    params: p.SamplingParams,
    stream: bool = False,
    count_only: bool = False,
) -> GenerationRequest:
    tools = asked.offered_tools()
    sources = ImageSources()
    return GenerationRequest(
        model=asked.model or "",
        params=params,
        messages=chat_messages(asked.instructions, history + items, sources=sources, earlier=len(history)),
        images=tuple(sources.found),
        stream=stream,
        tools=_tools_json(tools),
        parse_tool_calls=bool(tools),
        max_tool_calls=1 if asked.parallel_tool_calls is False else asked.max_tool_calls or 0,
        forced_tool_choice=asked.forced_tool_choice,
        thinking=asked.thinking,
        count_only=count_only,
    )


def _params(asked: CreateRequest, limits: RequestLimits) -> p.SamplingParams:
    return p.SamplingParams(
        grammar=asked.grammar(limits),
        logprobs=asked.logprobs,
        top_logprobs=asked.top_logprobs or 0,
        max_tokens=limits.max_tokens if asked.max_output_tokens is None else asked.max_output_tokens,
        fit_context=asked.max_output_tokens is None,
        temperature=1.0 if asked.temperature is None else asked.temperature,
        top_p=1.0 if asked.top_p is None else asked.top_p,
    )


def _tool_object(tool: Tool) -> dict:
    if tool.type == "namespace":
        return {"type": "namespace", "name": tool.name, "description": tool.description or "", "tools": [_tool_object(inner) for inner in tool.tools or ()]}
    return {"type": "function", "name": tool.name, "description": tool.description, "parameters": tool.parameters, "strict": tool.strict}


def _echo(asked: CreateRequest) -> dict:
    """The response object's fields that repeat the request."""
    text_format = asked.text.format if asked.text is not None else None
    choice = asked.tool_choice if asked.tool_choice is not None else "auto"
    return {
        "instructions": asked.instructions,
        "max_output_tokens": asked.max_output_tokens,
        "max_tool_calls": asked.max_tool_calls,
        "metadata": asked.metadata or {},
        "model": asked.model,
        "parallel_tool_calls": asked.parallel_tool_calls is not False,
        "previous_response_id": asked.previous_response_id,
        "reasoning": {"effort": asked.reasoning.effort if asked.reasoning else None, "summary": None},
        "service_tier": "default",
        "store": asked.store,
        "temperature": 1.0 if asked.temperature is None else asked.temperature,
        "text": {
            "format": msgspec.to_builtins(text_format) if text_format is not None else {"type": "text"},
            "verbosity": (asked.text.verbosity if asked.text else None) or "medium",
        },
        "tool_choice": choice if isinstance(choice, str) else msgspec.to_builtins(choice),
        "tools": [_tool_object(tool) for tool in asked.tools or ()],
        "top_logprobs": asked.top_logprobs or 0,
        "top_p": 1.0 if asked.top_p is None else asked.top_p,
        "truncation": "disabled",
        # Not nullable in the Response: left out where the request named none.
        **({"user": asked.user} if asked.user is not None else {}),
    }


async def create_response(state: ServerState, store: ResponseStore, body: bytes) -> Response:
    asked = decode_request(body, CreateRequest, state.limits)
    items = input_items(asked.input)
    history = await _history(store, asked.previous_response_id, body_bytes=len(body), max_body_bytes=state.config.max_body_bytes)
    generation_request = _generation_request(asked, history, items, params=_params(asked, state.limits), stream=bool(asked.stream))
    answer = ResponseAnswer(echo=_echo(asked), logprobs=asked.logprobs, namespaces=asked.namespaces())
    keeper = _Keeper(store=store if asked.store else None, owner=api_key_owner(), asked=asked, history=history, items=items, answer=answer)
    generation = await Generation.start(state, generation_request)
    if not asked.stream:
        response = answer.response(await generation.collect())
        await keeper.keep()
        return json_response(response)
    return await generation.stream(answer, before_closing=keeper.keep)


@attrs.frozen(kw_only=True)
class _Keeper:
    """Keeps a response once its answer is whole (completed or incomplete; a failed one is not kept)."""

    # None: the request said store false.
    store: ResponseStore | None
    owner: str
    asked: CreateRequest
    history: list[dict]
    items: list[dict]
    answer: ResponseAnswer

    async def keep(self) -> None:
        final = self.answer.final
        if self.store is None or final is None or final["status"] == "failed":
            return
        await self.store.put(
            self.owner,
            self.answer.id,
            response=final,
            input_items=self.items,
            history=[*self.history, *self.items, *final["output"]],
            previous_response_id=self.asked.previous_response_id,
        )


async def count_input_tokens(state: ServerState, store: ResponseStore, body: bytes) -> Response:
    """The prompt's tokens as POST /v1/responses would feed the model the same input, counted by the model's worker."""
    asked = decode_request(body, CountRequest, state.limits)
    history = await _history(store, asked.previous_response_id, body_bytes=len(body), max_body_bytes=state.config.max_body_bytes)
    params = p.SamplingParams(max_tokens=1, grammar=asked.grammar(state.limits))
    counted = await count_prompt_tokens(state, _generation_request(asked, history, input_items(asked.input), params=params, count_only=True))
    return json_response(count_object(counted))
