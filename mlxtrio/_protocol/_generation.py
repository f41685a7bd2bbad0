"""Generation: a request's prompt and sampling (``Generate``), and what its sequences produce (``Step``)."""

from __future__ import annotations

import msgspec

from ._message import _Message


class ToolCall(msgspec.Struct, array_like=True, frozen=True):
    """A function call: its name and its arguments as JSON text (OpenAI's shape)."""

    name: str
    arguments: str
    # The id the client was given for it (earlier turns); "" where none was.
    id: str = ""


class ImageInput(msgspec.Struct, array_like=True, frozen=True):
    """An image of a request, as sent: its bytes are decoded in the worker only (worker/_vision/)."""

    # The encoded image (PNG, JPEG, WebP or GIF), as the client sent it or the fetcher got it.
    data: bytes
    # The request's field it came from (``messages[0].content[1]``), for an error that names it.
    where: str
    # OpenAI's ``detail``: "low" holds the image to LOW_DETAIL_PIXELS; "auto" and "high" to the server's image_max_pixels.
    detail: str = "auto"


# Pixels an image sent with detail "low" is resized to at most, as OpenAI's low detail (512 x 512).
LOW_DETAIL_PIXELS = 512 * 512


class ContentPart(msgspec.Struct, array_like=True, frozen=True):
    """A part of a message's content, in order: text, or an image (an index into ``Generate.images``)."""

    text: str = ""
    # -1: a text part.
    image: int = -1


class ChatMessage(msgspec.Struct, array_like=True, frozen=True):
    role: str
    # The message's text; with ``parts``, its text parts joined.
    content: str
    # An assistant turn's calls, and the call a tool message answers.
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    # An assistant turn's thinking, given to the template as ``reasoning_content`` when not empty.
    reasoning: str = ""
    # A message with images: its content as parts in order, text and images (empty: ``content`` alone).
    parts: tuple[ContentPart, ...] = ()


class Grammar(msgspec.Struct, array_like=True, frozen=True):
    """What a sequence's output must match. The worker compiles it (worker/_grammar.py), never the orchestrator.

    ``syntax`` is "json_schema" (``text`` is a JSON schema: the output is a
    JSON document valid against it), "json_tool_call" (``text`` is a call's
    JSON schema: the output is one call in the json_tools syntax,
    ``<tool_call>`` JSON ``</tool_call>``) or "regex".
    """

    syntax: str
    text: str
    # The request's field it came from, for an error that names it.
    param: str = "response_format"


class SamplingParams(msgspec.Struct, array_like=True, frozen=True):
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # Generate exactly max_tokens, ignoring end-of-sequence (vLLM's extension; benchmarks use it).
    ignore_eos: bool = False
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # (token id, bias) pairs.
    logit_bias: tuple[tuple[int, float], ...] = ()
    # Report each generated token's log probability, and this many alternatives.
    logprobs: bool = False
    top_logprobs: int = 0
    # What the output must match (response_format, a required tool call); None: free text.
    grammar: Grammar | None = None
    # The request named no max_tokens: max_tokens is the server's cap (MLX_MAX_TOKENS), and the worker
    # lowers it to what the context leaves after the prompt, as vLLM does.
    fit_context: bool = False
    # A completion's first delta starts with its prompt's text (``Delta.echoed``), and, with logprobs,
    # the prompt tokens' log probabilities (the first's None).
    echo: bool = False


class Generate(_Message, tag="generate"):
    """Start a request's sequences, one per choice. Exactly one of ``messages`` (chat) and ``prompt`` (completion)."""

    request_id: int
    params: SamplingParams
    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None
    # The request's tools (OpenAI's list, as JSON text) for the chat template,
    # and whether to turn the model's tool-call syntax into ToolCalls.
    tools: str | None = None
    parse_tool_calls: bool = False
    # parallel_tool_calls false: the sequence ends at its first call (0: no limit).
    max_tool_calls: int = 0
    # How many more Generates the orchestrator expects soon for this worker:
    # this request's other choices, and the requests it is still taking in
    # that are for this model or whose bodies it has not read. A hint: an
    # idle worker waits for them briefly before a batch's first step (orchestrator/_intake.py).
    followers: int = 0
    # The request's n: its choices are sequences request_id, request_id + 1, ..., sampling with
    # seed, seed + 1, ... where there is a seed. They share one Generate, so one tokenization.
    choices: int = 1
    # In place of ``prompt``: a completion's several prompts, or its token ids. The choices are split
    # evenly among them in order: with k each, prompt i's are sequences request_id + i * k onwards.
    prompts: tuple[str | tuple[int, ...], ...] = ()
    # The chat template's thinking switch (``enable_thinking``); None: the template's default.
    thinking: bool | None = None
    # Only count the prompt's tokens: Admitted, then one last Delta (finish_reason "counted"); nothing is generated.
    count_only: bool = False
    # Split the model's thinking into ``Delta.reasoning`` (False: it stays in the text, markers and all,
    # for a surface whose wire has no place for it).
    split_reasoning: bool = True
    # The images ``messages``' parts name, in order of appearance; only a vision model takes them.
    images: tuple[ImageInput, ...] = ()


class TokenLogprob(msgspec.Struct, array_like=True, frozen=True):
    """One token's log probability, and the most likely alternatives at that step (with no alternatives of their own)."""

    # The token's text: U+FFFD where it holds part of a character, which ``token_bytes`` holds whole.
    token: str
    # None for an echoed prompt's first token, which nothing predicts.
    logprob: float | None
    top: tuple[TokenLogprob, ...] = ()
    # The token's own bytes: joined, a sequence's rebuild its text's UTF-8.
    token_bytes: bytes = b""
    id: int = 0


class Delta(msgspec.Struct, array_like=True, frozen=True):
    """What one sequence produced in one step."""

    request_id: int
    text: str
    # Totals so far, so the last delta carries the usage.
    prompt_tokens: int
    completion_tokens: int
    # None while the sequence goes on; "stop" or "length" on its last delta ("counted" for a count_only Generate).
    finish_reason: str | None = None
    # Prompt tokens whose KV cache came from the prompt cache.
    cached_tokens: int = 0
    # For the tokens this delta covers, when the request asked for them.
    logprobs: tuple[TokenLogprob, ...] = ()
    # Calls completed in this delta (their text is not in ``text``).
    tool_calls: tuple[ToolCall, ...] = ()
    # On a last delta: the sequence failed after all (its grammar failed midway); the request gets this
    # error, an invalid_request naming the request's field ``error_param`` (code grammar_failed).
    error: str | None = None
    error_param: str | None = None
    # On an echoing sequence's first delta: how many characters of ``text`` are the prompt's (the
    # rest is generated); its logprobs then start with the prompt's ``prompt_tokens``.
    echoed: int = 0
    # The model's thinking released in this step, split from ``text`` by the tokenizer's think markers.
    reasoning: str = ""
    # On a last delta ending in "stop": the stop string that ended the sequence; None when anything else did.
    stop_string: str | None = None
    # Of completion_tokens so far, those that were the model's thinking (0 where it is not split out).
    reasoning_tokens: int = 0


class Step(_Message, tag="step"):
    """One decode step's output for every sequence that produced something: one frame per step."""

    deltas: tuple[Delta, ...]


class Admitted(_Message, tag="admitted"):
    """Requests the engine took in: their prompts fit and every check that comes before a first token passed.

    A stream's 200 waits for it (what it refuses is an ordinary error
    response), and goes out with it, before the prefill's first token.
    """

    request_ids: tuple[int, ...]
    # Each one's prompt tokens (of its first sequence's prompt), as its usage will count them: a stream's
    # opening can tell the prompt's size before any token (Anthropic's message_start).
    prompt_tokens: tuple[int, ...] = ()
