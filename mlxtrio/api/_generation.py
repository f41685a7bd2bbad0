"""One generation, whichever API surface asked for it, run against the worker of its model.

A surface translates its request into a ``GenerationRequest``, and the
worker's ``Delta`` events back into its own responses through an ``Answer``;
what lies between is here, the same for every surface: the request in the
server's intake, its model's worker, the model loaded by the request's
deadline, admission, the generation entered before a stream's 200, the
request timeout, a graceful stop's cut, cancellation, and the request's
record.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import attrs
import trio
from quart import Response, g, request
from quart_trio import QuartTrio

from .. import _protocol as p
from .._errors import ErrorKind, ServerError
from ..orchestrator import Arrival, Events, Intake, ServedModel
from ._asgi import HeldForBody, enter_for_body
from ._common import ServerState, json_response
from ._errors import status_of
from ._images import ImageSource, load_images
from ._in_flight import InFlight
from ._observe import CLIENT_CLOSED_REQUEST, RequestRecord, current_record

__all__ = [
    "Answer", "Collected", "Generation", "GenerationRequest", "Usage", "count_prompt_tokens", "ensure_ready_by", "install_intake", "respond",
    "served_model", "timed_out",
]


@attrs.frozen(kw_only=True)
class GenerationRequest:
    """What a surface asks of a model: the pieces of one ``Generate``, and whether to stream the answer."""

    model: str
    params: p.SamplingParams
    # Exactly one of them: a chat's messages, a completion's prompt, or its several prompts or token ids.
    messages: tuple[p.ChatMessage, ...] | None = None
    prompt: str | None = None
    prompts: tuple[str | tuple[int, ...], ...] = ()
    # Sequences: of the one prompt, or split evenly among the prompts.
    n: int = 1
    stream: bool = False
    # Seconds the model stays loaded after this request (negative: forever; None: the idle timeout).
    keep_alive: float | None = None
    # The tools for the chat template (OpenAI's list, as JSON text), and whether to parse calls.
    tools: str | None = None
    parse_tool_calls: bool = False
    # 1: the sequence ends at its first call; 0: no limit.
    max_tool_calls: int = 0
    # The request's tool choice as its 400 shows it, when it forces a call: the forcing grammar
    # writes the json_tools syntax, so only a model that reads that syntax back may be forced.
    forced_tool_choice: str | None = None
    # The chat template's thinking switch (None: its default), and counting the prompt instead of generating.
    thinking: bool | None = None
    count_only: bool = False
    # The model's thinking in ``Delta.reasoning``; False: left in the text (a wire with no place for it).
    split_reasoning: bool = True
    # The images the messages' parts name by index, as the request refers to them: ``Generation.start``
    # loads and checks them (api/_images.py) before anything goes to the worker.
    images: tuple[ImageSource, ...] = ()


@attrs.frozen
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    # Of the completion tokens, those that were thinking (where the surface splits it out).
    reasoning_tokens: int = 0

    @classmethod
    def of(cls, lasts: Sequence[p.Delta]) -> Usage:
        """From the last Delta of every choice: one prompt, every choice's completion."""
        return cls(
            lasts[0].prompt_tokens,
            sum(last.completion_tokens for last in lasts),
            max(last.cached_tokens for last in lasts),
            sum(last.reasoning_tokens for last in lasts),
        )


@attrs.frozen
class Collected:
    """A whole generation, per choice: its text, its tool calls, its tokens' log probabilities, its last Delta
    (its finish reason, the stop string that ended it), and its reasoning."""

    texts: list[str]
    tool_calls: list[list[p.ToolCall]]
    logprobs: list[list[p.TokenLogprob]]
    lasts: list[p.Delta]
    reasonings: list[str]

    @property
    def usage(self) -> Usage:
        return Usage.of(self.lasts)


class Answer(Protocol):
    """How a surface answers one generation: a whole response, or a stream's events as the bytes to send.

    A stream is ``opening`` (with the 200, once the worker has taken the
    request in: it knows the prompt's size), then ``delta`` per event, then ``closing``; or, where it
    fails after its 200, ``error`` instead of what is left.
    ``delta`` runs per token: it builds what it sends and nothing more.
    While nothing else goes out for a while (a long prefill), ``keepalive``
    does, again and again.
    """

    def response(self, collected: Collected) -> object: ...

    def opening(self, prompt_tokens: int) -> bytes: ...

    def delta(self, choice: int, delta: p.Delta) -> bytes: ...

    def closing(self, usage: Usage | None) -> bytes: ...

    def error(self, error: ServerError) -> bytes: ...

    def keepalive(self) -> bytes:
        """What goes out when the stream has been silent for ``MLX_STREAM_KEEPALIVE`` (an SSE comment, a ping)."""
        ...


def install_intake(app: QuartTrio, intake: Intake, paths: Collection[str]) -> None:
    """A POST to one of ``paths`` is in the server's intake from after its key check until its Generate goes out."""

    @app.before_request
    async def arrive() -> None:
        if request.method == "POST" and request.url_rule is not None and request.url_rule.rule in paths:
            g.arrival = intake.arrive()

    @app.teardown_request
    async def leave(_error: BaseException | None) -> None:
        arrival: Arrival | None = g.pop("arrival", None)
        if arrival is not None:
            arrival.leave()  # nothing if its Generate went out


# A stream's content type unless its surface names another (Ollama's streams are NDJSON).
SSE = "text/event-stream; charset=utf-8"


async def respond(state: ServerState, generation_request: GenerationRequest, answer: Answer, *, content_type: str = SSE) -> Response:
    """The response to a generation request: ``answer``'s stream (of ``content_type``), or its whole response as JSON."""
    generation = await Generation.start(state, generation_request)
    if generation_request.stream:
        return await generation.stream(answer, content_type=content_type)
    return json_response(answer.response(await generation.collect()))


async def count_prompt_tokens(state: ServerState, generation_request: GenerationRequest) -> int:
    """The prompt's tokens as the model's worker would feed them to it (``count_only``): nothing is generated."""
    assert generation_request.count_only
    generation = await Generation.start(state, generation_request)
    return (await generation.collect()).lasts[0].prompt_tokens


async def served_model(state: ServerState, model: str) -> ServedModel:
    """The model a request names (a 404 if unknown; a 503 while the server stops), and the request's record says which."""
    if state.shutting_down:
        raise ServerError(ErrorKind.UNAVAILABLE, "the server is shutting down", code="shutting_down")
    record = current_record()
    record.name_model(model)  # logged even if it resolves to nothing (a 404)
    served = await state.supervisor.served_model(model)
    record.model = model
    return served


def timed_out(timeout: float) -> ServerError:
    return ServerError(ErrorKind.TIMEOUT, f"the request did not finish within the request timeout ({timeout:g} s)", code="timeout")


async def ensure_ready_by(served: ServedModel, deadline: float, timeout: float) -> None:
    """The model loaded (if it was not) by ``deadline``, the request's; a 504 past it. The request's record
    keeps how long it waited (Ollama's load_duration)."""
    waited_since = time.perf_counter()
    with trio.move_on_at(deadline) as scope:
        await served.ensure_ready()
    if scope.cancelled_caught:
        raise timed_out(timeout)
    current_record().model_ready(waited_since)


@attrs.define(eq=False)
class Generation:
    """A GenerationRequest and the model that serves it: run once, collected whole (``collect``) or streamed (``stream``)."""

    request: GenerationRequest
    served: ServedModel
    arrival: Arrival | None
    timeout: float
    in_flight: InFlight
    # Seconds of silence on a stream before a keep-alive event (0: none).
    keepalive: float = 0.0
    # The request's images, loaded and checked.
    images: tuple[p.ImageInput, ...] = ()

    @classmethod
    async def start(cls, state: ServerState, generation_request: GenerationRequest) -> Generation:
        """The request's model found (a 404 if unknown), its images loaded and checked (a 4xx naming the first bad one),
        and a model that can be forced to call a tool if it must."""
        served = await served_model(state, generation_request.model)
        arrival: Arrival | None = g.get("arrival")
        if arrival is not None:
            # Counted for this model's worker only from here (it may now wait for a load).
            arrival.identify(served.model_id)
        if generation_request.images and served.takes_images is False:
            where = generation_request.images[0].where
            raise ServerError(ErrorKind.INVALID_REQUEST, f"{where}: the model {served.model_id!r} does not take images, only text", param=where)
        images = await load_images(generation_request.images, state.config)
        timeout = state.config.request_timeout
        if generation_request.forced_tool_choice is not None:
            await ensure_ready_by(served, trio.current_time() + timeout, timeout)
            if served.tool_format != "json_tools":
                raise ServerError(
                    ErrorKind.INVALID_REQUEST,
                    f"tool_choice {generation_request.forced_tool_choice} needs a model with <tool_call> JSON tool calls; "
                    f"{generation_request.model!r} has {served.tool_format or 'no tool calling'}",
                    param="tool_choice",
                )
        return cls(generation_request, served, arrival, timeout, state.in_flight, state.config.stream_keepalive, images)

    def _generate(self) -> AbstractAsyncContextManager[Events]:
        asked = self.request
        return self.served.generate(
            asked.params,
            messages=asked.messages,
            prompt=asked.prompt,
            prompts=asked.prompts,
            n=asked.n,
            keep_alive=asked.keep_alive,
            tools=asked.tools,
            parse_tool_calls=asked.parse_tool_calls,
            max_tool_calls=asked.max_tool_calls,
            thinking=asked.thinking,
            count_only=asked.count_only,
            split_reasoning=asked.split_reasoning,
            images=self.images,
            arrival=self.arrival,
        )

    async def collect(self) -> Collected:
        """Every choice's deltas, joined; a 504 past the request timeout."""
        choices = self.request.n
        record = current_record()
        parts: list[list[str]] = [[] for _ in range(choices)]
        reasonings: list[list[str]] = [[] for _ in range(choices)]
        logprobs: list[list[p.TokenLogprob]] = [[] for _ in range(choices)]
        calls: list[list[p.ToolCall]] = [[] for _ in range(choices)]
        lasts: list[p.Delta | None] = [None] * choices
        with trio.move_on_after(self.timeout) as scope:
            # Loaded first, as a stream is: the wait is the request's load time, apart from its generation.
            self.served.check_capacity(choices)
            await ensure_ready_by(self.served, trio.current_time() + self.timeout, self.timeout)
            async with self._generate() as events:
                async for delta in events:
                    index = events.choice(delta)
                    record.on_delta(index, delta)
                    parts[index].append(delta.text)
                    reasonings[index].append(delta.reasoning)
                    logprobs[index].extend(delta.logprobs)
                    calls[index].extend(delta.tool_calls)
                    lasts[index] = delta
        if scope.cancelled_caught or any(last is None for last in lasts):
            raise timed_out(self.timeout)
        return Collected(
            ["".join(part) for part in parts],
            calls,
            logprobs,
            lasts,  # type: ignore[arg-type]
            ["".join(part) for part in reasonings],
        )

    async def stream(
        self, answer: Answer, *, before_closing: Callable[[], Awaitable[None]] | None = None, content_type: str = SSE
    ) -> Response:
        """A streaming response: ``answer``'s events; the error as its last event if it fails after the 200.

        ``before_closing`` is awaited once the answer is whole, after its ``closing`` is made and before it
        goes out (the Responses API keeps the response then, so that a client may continue from it at once).

        The model is loaded, capacity checked and the generation entered before
        the 200 goes out, so a load failure, a full queue or a worker that is
        gone is still an ordinary error response. Entering it sends the
        ``Generate`` at once, in the same scheduler turn as the request's body
        (no schedule point between them): in a burst, the worker admits the
        first requests while the orchestrator is still taking in the others,
        instead of after all of them and their headers. The body takes the
        generation over; if the body never runs (the client left first), the
        request's end leaves it, which cancels its sequences
        (``enter_for_body``).

        The 200 waits for the worker to take the request in (``p.Admitted``):
        every error it decides before a first token (a prompt over the
        context, a schema that cannot be enforced or did not compile in time,
        a template that refuses the messages, a token outside the vocabulary)
        is then an ordinary error response, as it is without streaming,
        instead of an error event after a 200. The answer's opening (a chat's
        role chunk) goes out with the 200, before the prefill, as OpenAI's
        does: a client sees at once that its request is being answered.
        """
        deadline = trio.current_time() + self.timeout
        self.served.check_capacity(self.request.n)
        await ensure_ready_by(self.served, deadline, self.timeout)

        record = current_record()
        held = await enter_for_body(self._generate(), unused=lambda: record.finish(CLIENT_CLOSED_REQUEST))
        # A ServerError from here is the response (the request's end leaves ``held``, cancelling the rest).
        with trio.move_on_at(deadline) as scope:
            prompt_tokens = await held.value.admitted()
        if scope.cancelled_caught:
            raise timed_out(self.timeout)
        # From here the body (or, without one, the request's end) finishes the record, with the stream's outcome.
        record.streaming = True
        response = Response(
            self._body(held, answer, record, deadline, prompt_tokens, before_closing), status=200, content_type=content_type
        )
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"
        # Quart would otherwise cut a stream after RESPONSE_TIMEOUT.
        response.timeout = None
        return response

    async def _body(
        self,
        held: HeldForBody[Events],
        answer: Answer,
        record: RequestRecord,
        deadline: float,
        prompt_tokens: int,
        before_closing: Callable[[], Awaitable[None]] | None,
    ) -> AsyncIterator[bytes]:
        """The stream's bytes. Events that are ready together leave together (the last token's with the
        closing): each body message is a socket write and an HTTP chunk, and the orchestrator's CPU per
        write is what a burst of requests queues behind."""
        # Until it ends otherwise, the client left (the generator is closed mid-yield).
        status = CLIENT_CLOSED_REQUEST
        lasts: list[p.Delta | None] = [None] * self.request.n
        # Events not sent yet, to go out with the next.
        waiting = b""
        try:
            # No cancel scope may stay open across a yield: a fresh one per wait.
            async with held as events:
                opening = answer.opening(prompt_tokens)
                if opening:
                    yield opening
                while not events.finished:
                    # Past the deadline, or cut at the end of a graceful stop's grace period.
                    with self.in_flight.cuttable(deadline) as scope:
                        # Until the next event, or a keep-alive's time (waiting for an event can be cut short safely).
                        with trio.move_on_after(self.keepalive or math.inf) as silence:
                            delta = await events.__anext__()
                    if silence.cancelled_caught and not scope.cancelled_caught:
                        yield waiting + answer.keepalive()
                        waiting = b""
                        continue
                    if scope.cancelled_caught:
                        # Leaving the block cancels the sequence in the worker.
                        error = self.in_flight.error() if self.in_flight.is_cut else timed_out(self.timeout)
                        status = status_of(error)
                        yield waiting + answer.error(error)
                        return
                    index = events.choice(delta)
                    record.on_delta(index, delta)
                    lasts[index] = delta
                    waiting += answer.delta(index, delta)
                    if not events.finished:
                        yield waiting
                        waiting = b""
            status = 200
            finished = all(last is not None for last in lasts)
            closing = answer.closing(Usage.of(lasts) if finished else None)  # type: ignore[arg-type]
            if before_closing is not None:
                await before_closing()
            yield waiting + closing
        except ServerError as exc:
            status = status_of(exc)
            yield waiting + answer.error(exc)
        finally:
            record.finish(status)
