"""POST /v1/messages and /v1/messages/count_tokens: the request as one GenerationRequest, its Deltas as a Message.

System text, content blocks, tools and tool choice become the chat
messages, tools and grammar chat completions use (``api/_structured.py``);
nothing of sampling, tools, grammars or streaming is done twice.
"""

from __future__ import annotations

import msgspec
from quart import Response

from ... import _protocol as p
from .._common import RequestLimits, ServerState, json_response
from .._decode import decode_request
from .._generation import GenerationRequest, count_prompt_tokens, respond
from .._images import ImageSource, ImageSources, parts_message
from .._structured import JSON_OBJECT, forced_call_grammar, json_schema_grammar, template_tools
from ._answer import MessageAnswer
from ._schemas import (
    Base64Source,
    CountTokensRequest,
    ImageBlock,
    Message,
    MessagesRequest,
    TextBlock,
    ThinkingBlock,
    ToolReferenceBlock,
    ToolResultBlock,
    ToolUseBlock,
    UrlSource,
)

__all__ = ["count_tokens", "generation_request", "messages"]

_json = msgspec.json.Encoder()
# Claude Code's first system block: billing metadata for Anthropic's servers, not instructions for the
# model; it changes between conversations, and at the prompt's start it would defeat the prompt cache.
_BILLING_HEADER = "x-anthropic-billing-header:"


async def messages(state: ServerState, body: bytes) -> Response:
    request = decode_request(body, MessagesRequest, state.limits)
    answer = MessageAnswer.new(request.model, omit_thinking=request.omits_thinking)
    return await respond(state, generation_request(request, state.limits), answer)


async def count_tokens(state: ServerState, body: bytes) -> Response:
    """The prompt's tokens as /v1/messages would feed the model (template, system, tools), counted by its worker."""
    request = decode_request(body, CountTokensRequest, state.limits)
    counted = await count_prompt_tokens(state, generation_request(request, state.limits, count_only=True))
    return json_response({"input_tokens": counted})


def generation_request(request: CountTokensRequest, limits: RequestLimits, *, count_only: bool = False) -> GenerationRequest:
    choice = request.tool_choice
    # tool_choice none: the model is not told of the tools, so as not to call them.
    calls = bool(request.tools) and (choice is None or choice.type != "none")
    forced = request.forces_tool_call and not count_only
    if isinstance(request, MessagesRequest):
        params = p.SamplingParams(
            max_tokens=min(request.max_tokens, limits.max_tokens),
            fit_context=True,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            top_k=request.top_k or 0,
            stop=tuple(request.stop_sequences or ()),
            grammar=None if count_only else _grammar(request, limits),
        )
    else:
        params = p.SamplingParams(max_tokens=limits.max_tokens, fit_context=True)
    sources = ImageSources()
    return GenerationRequest(
        model=request.model,
        params=params,
        messages=chat_messages(request, sources),
        images=tuple(sources.found),
        stream=isinstance(request, MessagesRequest) and bool(request.stream),
        tools=_tools(request) if calls else None,
        parse_tool_calls=calls,
        max_tool_calls=1 if choice is not None and choice.disable_parallel_tool_use else 0,
        forced_tool_choice=_json.encode(msgspec.structs.asdict(choice)).decode() if forced and choice is not None else None,
        thinking=request.thinking_switch(),
        count_only=count_only,
    )


def _grammar(request: MessagesRequest, limits: RequestLimits) -> p.Grammar | None:
    """A forced call (tool_choice any or tool), or output_config.format's JSON schema."""
    if request.forces_tool_call:
        choice = request.tool_choice
        assert choice is not None and request.tools is not None
        functions = [(tool.name, tool.input_schema) for tool in request.tools if choice.type == "any" or tool.name == choice.name]
        return forced_call_grammar(functions, param="tool_choice", max_bytes=limits.grammar_max_bytes)
    form = request.format()
    if form is None:
        return None
    return json_schema_grammar(form.schema or JSON_OBJECT, param="output_config.format.schema", max_bytes=limits.grammar_max_bytes)


def _tools(request: CountTokensRequest) -> str | None:
    """The tools the model is shown: deferred ones only once a tool_reference in a tool result names them."""
    referenced = {
        part.tool_name
        for message in request.messages
        if not isinstance(message.content, str)
        for block in message.content
        if isinstance(block, ToolResultBlock) and not isinstance(block.content, str)
        for part in block.content
        if isinstance(part, ToolReferenceBlock)
    }
    shown = [
        {"name": tool.name, "description": tool.description or "", "parameters": tool.input_schema}
        for tool in request.tools or ()
        if not tool.defer_loading or tool.name in referenced
    ]
    return template_tools(shown) if shown else None


def _joined(blocks: list[TextBlock]) -> str:
    return "\n".join(block.text for block in blocks)


def chat_messages(request: CountTokensRequest, sources: ImageSources) -> tuple[p.ChatMessage, ...]:
    """The system prompt and the messages, as a chat template takes them; their images gathered in ``sources``."""
    chat: list[p.ChatMessage] = []
    system = request.system
    if isinstance(system, list):
        system = _joined([block for block in system if not block.text.startswith(_BILLING_HEADER)])
    if system:
        chat.append(p.ChatMessage("system", system))
    for index, message in enumerate(request.messages):
        chat.extend(_chat_messages(message, f"messages.{index}.content", sources))
    return tuple(chat)


def _image(block: ImageBlock, where: str, sources: ImageSources) -> p.ContentPart:
    source = block.source
    if isinstance(source, Base64Source):
        return sources.part(ImageSource(where=where, url=source.data, media_type=source.media_type))
    assert isinstance(source, UrlSource)  # a file source is refused by the request's checks
    return sources.part(ImageSource(where=where, url=source.url))


def _parts(blocks: list, where: str, sources: ImageSources) -> list[p.ContentPart]:
    """The text and image blocks of ``blocks`` (``where`` holds them) as a message's parts, in order."""
    parts = []
    for number, block in enumerate(blocks):
        if isinstance(block, TextBlock):
            parts.append(p.ContentPart(text=block.text))
        elif isinstance(block, ImageBlock):
            parts.append(_image(block, f"{where}.{number}", sources))
    return parts


def _chat_messages(message: Message, where: str, sources: ImageSources) -> list[p.ChatMessage]:
    """One Anthropic message as chat messages: a user's tool results are tool messages of their own, in order."""
    if isinstance(message.content, str):
        return [p.ChatMessage(message.role, message.content)]
    if message.role == "assistant":
        texts = [block for block in message.content if isinstance(block, TextBlock)]
        calls = tuple(
            p.ToolCall(block.name, _json.encode(block.input).decode(), block.id) for block in message.content if isinstance(block, ToolUseBlock)
        )
        # Earlier thinking goes back as the template's reasoning_content; redacted thinking cannot be read.
        reasoning = "\n".join(block.thinking for block in message.content if isinstance(block, ThinkingBlock))
        return [p.ChatMessage("assistant", _joined(texts), calls, reasoning=reasoning)]
    # The tool messages come first, and so do their images: a worker fills the template's image places in order.
    chat = [
        _result_message(block, f"{where}.{number}.content", sources) for number, block in enumerate(message.content) if isinstance(block, ToolResultBlock)
    ]
    parts = _parts(message.content, where, sources)
    if parts or not chat:
        chat.append(parts_message(message.role, parts, joiner="\n"))
    return chat


def _result_message(block: ToolResultBlock, where: str, sources: ImageSources) -> p.ChatMessage:
    """A tool result as a tool message, its images (a screenshot) among its parts; an error result says so first,
    as templates have no field for it."""
    content = block.content
    parts = [p.ContentPart(text=content)] if isinstance(content, str) else _parts(content, where, sources)
    if block.is_error:
        if parts and parts[0].image < 0:
            parts[0] = p.ContentPart(text=f"Error: {parts[0].text}")
        else:
            parts.insert(0, p.ContentPart(text="Error: "))
    return parts_message("tool", parts, joiner="\n", tool_call_id=block.tool_use_id)
