"""POST /api/chat and /api/generate: the request as one GenerationRequest, its Deltas as Ollama's answer.

Messages, images, tools and ``format`` become the chat messages, images,
tools and grammar the other surfaces use (``api/_structured.py``,
``api/_images.py``); nothing of sampling, tools, grammars or streaming is
done twice. A request without messages (or without a prompt) only loads the
model, or unloads it with ``keep_alive`` 0, as Ollama's does.
"""

from __future__ import annotations

import contextlib
import logging

import msgspec
import trio
from quart import Response

from ... import _protocol as p
from ..._errors import ErrorKind, ServerError
from .._common import RequestLimits, ServerState, json_response
from .._decode import decode_request
from .._generation import GenerationRequest, respond
from .._images import ImageSource, ImageSources, parts_message
from .._observe import current_record, loggable
from .._structured import template_tools
from ...orchestrator import ModelEntry
from ._answer import OllamaAnswer, created_at
from ._schemas import ChatRequest, GenerateRequest, Message, known_option

__all__ = ["NDJSON", "chat", "generate", "load_or_unload", "not_found", "resolved"]

log = logging.getLogger("mlxtrio.api")
_json = msgspec.json.Encoder()
NDJSON = "application/x-ndjson"
# The tag Ollama gives a name without one: "demo:latest" is "demo".
_LATEST = ":latest"
# Of the unknown options a warning names, at most this many.
_NAMED_OPTIONS = 8


class _OptionNames(msgspec.Struct):
    options: dict[str, msgspec.Raw] | None = None


def not_found(model: str, why: str) -> ServerError:
    """Ollama's 404 for a model (its clients look for "not found"), and why, in mlxtrio's words."""
    return ServerError(ErrorKind.NOT_FOUND, f'model "{model[:200]}" not found: {why}', code="model_not_found", param="model")


def resolved(state: ServerState, model: str) -> ModelEntry:
    """The catalog's entry for ``model`` (Ollama's default tag, ``:latest``, left off if the name lacks it); Ollama's 404 where there is none."""
    catalog = state.supervisor.catalog
    try:
        return catalog.resolve(model)
    except ServerError as exc:
        if exc.kind is not ErrorKind.NOT_FOUND:
            raise
        untagged = model.removesuffix(_LATEST)
        if untagged != model and untagged:
            with contextlib.suppress(ServerError):
                return catalog.resolve(untagged)
        raise not_found(model, exc.message) from None


def _warn_of_unknown_options(body: bytes) -> None:
    """As Ollama does: an option it does not know is ignored, with a warning."""
    names = msgspec.json.decode(body, type=_OptionNames).options or {}
    unknown = [name for name in names if not known_option(name)]
    if unknown:
        shown = ", ".join(loggable(name) for name in unknown[:_NAMED_OPTIONS])
        log.warning("%s: unknown options ignored: %s", current_record().request_id, shown)


async def chat(state: ServerState, body: bytes) -> Response:
    request = decode_request(body, ChatRequest, state.limits)
    _warn_of_unknown_options(body)
    model = resolved(state, request.model).id
    if not request.messages:
        return await _load_only(state, model, request, chat=True)
    answer = OllamaAnswer.new(request.model, chat=True, logprobs=request.wants_logprobs)
    return await respond(state, chat_generation(request, state.limits, model=model), answer, content_type=NDJSON)


async def generate(state: ServerState, body: bytes) -> Response:
    request = decode_request(body, GenerateRequest, state.limits)
    _warn_of_unknown_options(body)
    model = resolved(state, request.model).id
    if not request.prompt and not request.images:
        return await _load_only(state, model, request, chat=False)
    answer = OllamaAnswer.new(request.model, chat=False, logprobs=request.wants_logprobs)
    return await respond(state, generate_generation(request, state.limits, model=model), answer, content_type=NDJSON)


async def _load_only(state: ServerState, model: str, request: ChatRequest | GenerateRequest, *, chat: bool) -> Response:
    """Load the model (its keep_alive from now on), or unload it with keep_alive 0: Ollama's answer says which."""
    reason = await load_or_unload(state, model, request.keep_alive_seconds(), task="generate")
    payload: dict = {"model": request.model, "created_at": created_at()}
    payload.update({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})
    payload.update(done=True, done_reason=reason)
    if request.streams:
        return Response(_json.encode(payload) + b"\n", status=200, content_type=NDJSON)
    return json_response(payload)


async def load_or_unload(state: ServerState, model: str, keep_alive: float | None, *, task: str) -> str:
    """A request with nothing to do but keep_alive: unload the model with 0, else load it for ``task`` and hold it
    that long from now ("unload" or "load", as Ollama's answer says)."""
    if state.shutting_down:
        raise ServerError(ErrorKind.UNAVAILABLE, "the server is shutting down", code="shutting_down")
    served = await state.supervisor.served_model(model)
    if keep_alive == 0:
        if served.statistics().active_requests:
            # Others' requests finish first: it unloads once idle (unless a later request's keep_alive says otherwise).
            served.hold(0)
        else:
            await served.unload("unloaded on request (keep_alive 0)")
        return "unload"
    served.check_task(task)
    with trio.move_on_after(state.config.request_timeout) as scope:
        await served.ensure_ready()
    if scope.cancelled_caught:
        raise ServerError(ErrorKind.TIMEOUT, f"the model did not load within the request timeout ({state.config.request_timeout:g} s)", code="timeout")
    served.check_task(task)
    served.hold(keep_alive)
    return "load"


def chat_generation(request: ChatRequest, limits: RequestLimits, *, model: str) -> GenerationRequest:
    """``model``: the catalog's id for the request's model."""
    mode = request.tool_mode()
    # tool_choice "none": the model is not told of the tools, so as not to call them.
    calls = mode not in (None, "none")
    sources = ImageSources()
    return GenerationRequest(
        model=model,
        params=request.sampling(limits, request.grammar(limits)),
        messages=tuple(_chat_message(message, f"messages.{index}", sources) for index, message in enumerate(request.messages)),
        images=tuple(sources.found),
        stream=request.streams,
        keep_alive=request.keep_alive_seconds(),
        tools=template_tools([msgspec.structs.asdict(tool.function) for tool in request.tools or ()]) if calls and request.tools else None,
        parse_tool_calls=calls,
        forced_tool_choice=_json.encode(request.tool_choice).decode() if request.forces_tool_call else None,
        thinking=request.thinking_switch(limits),
    )


def generate_generation(request: GenerateRequest, limits: RequestLimits, *, model: str) -> GenerationRequest:
    """The prompt as a user message in the chat template, after the system prompt; with ``raw``, as it is."""
    common = {
        "model": model,
        "params": request.sampling(limits, request.format_grammar(limits)),
        "stream": request.streams,
        "keep_alive": request.keep_alive_seconds(),
    }
    if request.raw:
        # A continuation of the text as it is: thinking in it is text.
        return GenerationRequest(prompt=request.prompt or "", split_reasoning=False, **common)  # type: ignore[arg-type]
    sources = ImageSources()
    messages = [p.ChatMessage("system", request.system)] if request.system else []
    messages.append(_chat_message(Message("user", request.prompt or "", images=request.images), "", sources))
    return GenerationRequest(
        messages=tuple(messages), images=tuple(sources.found), thinking=request.thinking_switch(limits), **common  # type: ignore[arg-type]
    )


def _image(data: str, where: str, sources: ImageSources) -> p.ContentPart:
    """A base64 image (its format told by its bytes), or a data: URL."""
    if data.startswith("data:"):
        return sources.part(ImageSource(where=where, url=data))
    return sources.part(ImageSource(where=where, url=data, media_type="image/*"))


def _arguments(arguments: dict[str, object] | str) -> str:
    return arguments if isinstance(arguments, str) else _json.encode(arguments).decode()


def _chat_message(message: Message, where: str, sources: ImageSources) -> p.ChatMessage:
    """One message: its images first, then its text, as Ollama's templates place them."""
    images = "images" if not where else f"{where}.images"
    parts = [_image(data, f"{images}.{number}", sources) for number, data in enumerate(message.images or ())]
    parts.append(p.ContentPart(text=message.content or ""))
    return parts_message(
        message.role,
        parts,
        joiner="",
        tool_calls=tuple(p.ToolCall(call.function.name, _arguments(call.function.arguments), call.id or "") for call in message.tool_calls or ()),
        # Ollama names the tool a result is from; a template that pairs results with calls gets that name.
        tool_call_id=message.tool_call_id or message.tool_name,
        reasoning=message.thinking or "",
    )
