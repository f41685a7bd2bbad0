"""The OpenAI-compatible API (main port): chat completions, completions, models, health.

Handlers know one thing of the rest of the server: ``Supervisor.worker(model)``
and its ``generate()``, a context manager yielding the request's events.
They know nothing about rings or processes.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import msgspec
import trio
from quart import Response, g, request

from .._errors import ErrorKind, ServerError
from ..orchestrator import Arrival, Events, ServedModel, Supervisor
from ._asgi import App, enter_for_body
from ._auth import require_bearer_token
from ._common import ServerState, install_error_handlers, json_response
from ._errors import openai_error, status_of
from ._in_flight import InFlight
from ._observe import CLIENT_CLOSED_REQUEST, current_record, install_observability
from ._origin import install_browser_checks
from ._requests import ChatCompletionRequest, CompletionRequest, decode_request

__all__ = ["create_openai_app"]

_json = msgspec.json.Encoder()
_GENERATION_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions"})


def _sse(payload: dict) -> bytes:
    return b"data: " + _json.encode(payload) + b"\n\n"


def _chat_logprobs(entries) -> dict:  # noqa: ANN001 - TokenLogprobs
    def one(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {
        "content": [
            {**one(entry.token, entry.logprob), "top_logprobs": [one(token, value) for token, value in entry.top]}
            for entry in entries
        ],
        "refusal": None,
    }


def _legacy_logprobs(entries, offset: int = 0) -> dict:  # noqa: ANN001 - TokenLogprobs
    """The completions API's older shape: parallel lists, and each token's offset in the text."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
    return {
        "tokens": [entry.token for entry in entries],
        "token_logprobs": [entry.logprob for entry in entries],
        "top_logprobs": [dict(entry.top) for entry in entries],
        "text_offset": offsets,
    }


def _tool_call(call) -> dict:  # noqa: ANN001 - ToolCall
    return {"id": "call_" + secrets.token_hex(12), "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def _usage(lasts: list) -> dict:
    """Usage from the last Delta of every choice: one prompt, every choice's completion."""
    prompt = lasts[0].prompt_tokens
    completion = sum(last.completion_tokens for last in lasts)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": max(last.cached_tokens for last in lasts)},
    }


def create_openai_app(state: ServerState) -> App:
    app = App("mlxtrio.openai", in_flight=state.in_flight)
    app.config["MAX_CONTENT_LENGTH"] = state.config.max_body_bytes
    app.config["BODY_TIMEOUT"] = state.config.body_timeout
    install_error_handlers(app)
    install_observability(app, state.metrics)
    install_browser_checks(app, state.config, bound_host=state.config.host)
    # /health stays open: load balancers and the daemon script probe it without a key.
    require_bearer_token(app, state.config.api_keys, code="invalid_api_key", open_paths={"/health"})
    supervisor: Supervisor = state.supervisor
    request_timeout = state.config.request_timeout

    @app.before_request
    async def arrive() -> None:
        # After the key check: a generation request is in the intake until its Generate goes out.
        if request.method == "POST" and request.url_rule is not None and request.url_rule.rule in _GENERATION_ENDPOINTS:
            g.arrival = supervisor.intake.arrive()

    @app.teardown_request
    async def leave(_error: BaseException | None) -> None:
        arrival: Arrival | None = g.pop("arrival", None)
        if arrival is not None:
            arrival.leave()  # nothing if its Generate went out

    @app.get("/health")
    async def health() -> Response:
        if state.shutting_down:
            return json_response({"status": "shutting_down"}, 503)
        return json_response({"status": "ok"})

    @app.get("/v1/models")
    async def list_models() -> Response:
        entries = supervisor.catalog.list()
        return json_response({"object": "list", "data": [_model_object(entry) for entry in entries]})

    @app.get("/v1/models/<path:model_id>")
    async def get_model(model_id: str) -> Response:
        return json_response(_model_object(supervisor.catalog.resolve(model_id)))

    @app.post("/v1/chat/completions")
    async def chat_completions() -> Response:
        parsed, worker, completion_id, created = await _begin(supervisor, state, ChatCompletionRequest, "chatcmpl-")
        if parsed.forces_tool_call:
            # The forcing grammar writes the json_tools syntax: only a model that reads it back may be forced.
            await _ensure_ready_by(worker, trio.current_time() + request_timeout, request_timeout)
            if worker.tool_format != "json_tools":
                raise ServerError(
                    ErrorKind.INVALID_REQUEST,
                    f"tool_choice {parsed.tool_choice!r} needs a model with <tool_call> JSON tool calls; "
                    f"{parsed.model!r} has {worker.tool_format or 'no tool calling'}",
                    param="tool_choice",
                )

        def generation():  # noqa: ANN202
            return worker.generate(
                parsed.sampling(state.limits),
                messages=parsed.chat_messages(),
                n=parsed.n,
                keep_alive=parsed.keep_alive_seconds(),
                tools=parsed.tools_json(),
                parse_tool_calls=parsed.parse_tool_calls,
                max_tool_calls=1 if parsed.parallel_tool_calls is False else 0,
                arrival=g.get("arrival"),
            )

        calls_so_far = [0] * parsed.n  # streamed: each choice's tool calls are numbered from 0

        def stream_delta(index: int, delta) -> dict:  # noqa: ANN001 - Delta
            content: dict = {"content": delta.text} if delta.text else {}
            if delta.tool_calls:
                content["tool_calls"] = [
                    {"index": calls_so_far[index] + number, **_tool_call(call)} for number, call in enumerate(delta.tool_calls)
                ]
                calls_so_far[index] += len(delta.tool_calls)
            return content

        def chunk(index: int, delta: dict, finish_reason: str | None, logprobs=()) -> dict:  # noqa: ANN001
            return {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": parsed.model,
                "choices": [
                    {
                        "index": index,
                        "delta": delta,
                        "logprobs": _chat_logprobs(logprobs) if parsed.logprobs else None,
                        "finish_reason": finish_reason,
                    }
                ],
            }

        if parsed.stream:
            return await _stream(
                worker,
                generation,
                request_timeout,
                in_flight=state.in_flight,
                choices=parsed.n,
                first=lambda index: chunk(index, {"role": "assistant", "content": ""}, None),
                each=lambda index, delta: chunk(index, stream_delta(index, delta), delta.finish_reason, delta.logprobs),
                usage=(lambda usage: {**chunk(0, {}, None), "choices": [], "usage": usage}) if parsed.include_usage else None,
            )
        texts, lasts, logprobs, calls = await _collect(generation(), parsed.n, request_timeout)

        def message(index: int) -> dict:
            if not calls[index]:
                return {"role": "assistant", "content": texts[index], "refusal": None}
            return {
                "role": "assistant",
                "content": texts[index] or None,
                "refusal": None,
                "tool_calls": [_tool_call(call) for call in calls[index]],
            }

        return json_response(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": parsed.model,
                "choices": [
                    {
                        "index": index,
                        "message": message(index),
                        "logprobs": _chat_logprobs(logprobs[index]) if parsed.logprobs else None,
                        "finish_reason": lasts[index].finish_reason,
                    }
                    for index in range(parsed.n)
                ],
                "usage": _usage(lasts),
            }
        )

    @app.post("/v1/completions")
    async def completions() -> Response:
        parsed, worker, completion_id, created = await _begin(supervisor, state, CompletionRequest, "cmpl-")

        def generation():  # noqa: ANN202
            return worker.generate(
                parsed.sampling(state.limits),
                prompt=parsed.prompt,
                n=parsed.n,
                keep_alive=parsed.keep_alive_seconds(),
                arrival=g.get("arrival"),
            )

        wants_logprobs = parsed.logprobs is not None
        offsets = [0] * parsed.n  # streamed: where each choice's next chunk starts

        def choice(index: int, text: str, finish_reason: str | None, logprobs=(), offset: int = 0) -> dict:  # noqa: ANN001
            return {
                "text": text,
                "index": index,
                "logprobs": _legacy_logprobs(logprobs, offset) if wants_logprobs else None,
                "finish_reason": finish_reason,
            }

        def chunk(index: int, text: str, finish_reason: str | None, logprobs=()) -> dict:  # noqa: ANN001
            offset = offsets[index]
            offsets[index] += len(text)
            return {
                "id": completion_id,
                "object": "text_completion",
                "created": created,
                "model": parsed.model,
                "choices": [choice(index, text, finish_reason, logprobs, offset)],
            }

        if parsed.stream:
            return await _stream(
                worker,
                generation,
                request_timeout,
                in_flight=state.in_flight,
                choices=parsed.n,
                first=None,
                each=lambda index, delta: chunk(index, delta.text, delta.finish_reason, delta.logprobs),
                usage=(lambda usage: {**chunk(0, "", None), "choices": [], "usage": usage}) if parsed.include_usage else None,
            )
        texts, lasts, logprobs, _ = await _collect(generation(), parsed.n, request_timeout)
        return json_response(
            {
                **chunk(0, "", None),
                "choices": [
                    choice(index, texts[index], lasts[index].finish_reason, logprobs[index]) for index in range(parsed.n)
                ],
                "usage": _usage(lasts),
            }
        )

    return app


def _model_object(entry) -> dict:  # noqa: ANN001
    return {"id": entry.id, "object": "model", "created": 0, "owned_by": entry.description}


async def _begin(supervisor: Supervisor, state: ServerState, request_type: type, id_prefix: str):  # noqa: ANN202
    """What every generation request starts with: its body validated, its model's worker, an id and a time."""
    parsed = decode_request(await request.get_data(cache=False), request_type, state.limits)
    if state.shutting_down:
        raise ServerError(ErrorKind.UNAVAILABLE, "the server is shutting down", code="shutting_down")
    worker = await supervisor.worker(parsed.model)
    current_record().model = parsed.model
    arrival: Arrival | None = g.get("arrival")
    if arrival is not None:
        # Counted for this model's worker only from here (it may now wait for a load).
        arrival.identify(worker.model_id)
    return parsed, worker, id_prefix + secrets.token_hex(12), int(time.time())


def _timed_out(timeout: float) -> ServerError:
    return ServerError(ErrorKind.TIMEOUT, f"the request did not finish within the request timeout ({timeout:g} s)", code="timeout")


async def _ensure_ready_by(worker: ServedModel, deadline: float, timeout: float) -> None:
    """The model loaded (if it was not) by ``deadline``, the request's; a 504 past it."""
    with trio.move_on_at(deadline) as scope:
        await worker.ensure_ready()
    if scope.cancelled_caught:
        raise _timed_out(timeout)


async def _collect(opened: AbstractAsyncContextManager[Events], choices: int, timeout: float):  # noqa: ANN202
    """A non-streaming request: each choice's deltas, joined; 504 past the request timeout."""
    record = current_record()
    parts: list[list[str]] = [[] for _ in range(choices)]
    logprobs: list[list] = [[] for _ in range(choices)]
    calls: list[list] = [[] for _ in range(choices)]
    lasts: list = [None] * choices
    with trio.move_on_after(timeout) as scope:
        async with opened as events:
            async for delta in events:
                index = events.choice(delta)
                record.on_delta(index, delta)
                parts[index].append(delta.text)
                logprobs[index].extend(delta.logprobs)
                calls[index].extend(delta.tool_calls)
                lasts[index] = delta
    if scope.cancelled_caught or any(last is None for last in lasts):
        raise _timed_out(timeout)
    return ["".join(part) for part in parts], lasts, logprobs, calls


async def _stream(
    worker: ServedModel,
    generation: Callable[[], AbstractAsyncContextManager[Events]],
    timeout: float,
    *,
    in_flight: InFlight,
    choices: int,
    first: Callable[[int], dict] | None,
    each: Callable,
    usage: Callable[[dict], dict] | None,
) -> Response:
    """A streaming request: SSE chunks, then ``data: [DONE]``; an error event if it fails midway.

    The model is loaded, capacity checked and the generation entered before
    the 200 goes out, so a load failure, a full queue or a worker that is
    gone is still an ordinary error response. Entering it sends the
    ``Generate`` at once, in the same scheduler turn as the request's body
    (no schedule point between them): in a burst, the worker admits the first
    requests while the orchestrator is still taking in the others, instead
    of after all of them and their headers (docs/PERFORMANCE.md). The body
    takes the generation over; if the body never runs (the client left
    first), the request's end leaves it, which cancels its sequences
    (``enter_for_body``).

    The 200 waits for the first event of the generation: every error the
    worker decides before a first token (a prompt over the context, a schema
    that cannot be enforced or did not compile in time, a template that
    refuses the messages) is then an ordinary error response, as it is
    without ``stream``, instead of an error event after a 200 (issue 22).
    Headers and the first token leave together, so the client's time to
    first token is the same.

    Events that are ready together leave together: the role chunk with the
    first token's, the last token's with the usage chunk and ``[DONE]``. Each
    body message is a socket write and an HTTP chunk, and the orchestrator's
    CPU per write is what a burst of requests queues behind (docs/PERFORMANCE.md).
    """
    deadline = trio.current_time() + timeout
    worker.check_capacity(choices)
    await _ensure_ready_by(worker, deadline, timeout)

    record = current_record()
    held = await enter_for_body(generation(), unused=lambda: record.finish(CLIENT_CLOSED_REQUEST))
    # A ServerError from here is the response (the request's end leaves ``held``, cancelling the rest).
    with trio.move_on_at(deadline) as scope:
        early = await held.value.__anext__()
    if scope.cancelled_caught:
        raise _timed_out(timeout)
    # From here the body (or, without one, the request's end) finishes the record, with the stream's outcome.
    record.streaming = True

    async def body() -> AsyncIterator[bytes]:
        # Until it ends otherwise, the client left (the generator is closed mid-yield).
        status = CLIENT_CLOSED_REQUEST
        # Events not sent yet, to go out with the next.
        waiting = b""
        try:
            # No cancel scope may stay open across a yield: a fresh one per wait.
            async with held as events:
                if first is not None:
                    waiting = b"".join(_sse(first(index)) for index in range(choices))
                lasts: list = [None] * choices
                delta = early  # taken before the 200
                while delta is not None or not events.finished:
                    if delta is None:
                        # Past the deadline, or cut at the end of a graceful stop's grace period.
                        with in_flight.cuttable(deadline) as scope:
                            delta = await events.__anext__()
                        if scope.cancelled_caught:
                            # Leaving the block cancels the sequence in the worker.
                            error = in_flight.error() if in_flight.is_cut else _timed_out(timeout)
                            status = status_of(error)
                            yield waiting + _sse(openai_error(error))
                            return
                    delta, taken = None, delta
                    index = events.choice(taken)
                    record.on_delta(index, taken)
                    lasts[index] = taken
                    waiting += _sse(each(index, taken))
                    if not events.finished:
                        yield waiting
                        waiting = b""
            status = 200
            if usage is not None and all(last is not None for last in lasts):
                waiting += _sse(usage(_usage(lasts)))
            yield waiting + b"data: [DONE]\n\n"
        except ServerError as exc:
            status = status_of(exc)
            yield waiting + _sse(openai_error(exc))
        finally:
            record.finish(status)

    response = Response(body(), status=200, content_type="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    # Quart would otherwise cut a stream after RESPONSE_TIMEOUT (60 s).
    response.timeout = None
    return response
