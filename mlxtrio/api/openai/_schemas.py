"""The OpenAI API's request bodies (msgspec structs), and the checks that make a bad one a 400.

Anything malformed becomes a 400 in OpenAI's shape, naming the field
(``param``) when there is one, before any 200. Unknown fields are ignored,
as OpenAI's own clients send fields a server may not know.
"""

from __future__ import annotations

import re

import msgspec

from ... import _protocol as p
from ..._errors import ErrorKind, ServerError
from .._common import RequestLimits
from .._durations import duration_seconds
from .._images import check_detail
from .._structured import JSON_OBJECT, NAME, forced_call_grammar, json_schema_grammar

__all__ = ["ChatCompletionRequest", "CommonRequest", "CompletionRequest", "ContentPart", "ImageUrl", "Message", "Tool"]

MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 512
_ROLES = {"system", "developer", "user", "assistant", "tool"}
# Token ids (logit_bias keys) are ASCII digits, within int32 as MLX indexes: int() would also take
# "\u00b2" (an error) and Arabic-Indic digits (read as others), and msgpack refuses past 64 bits.
_TOKEN_ID_RE = re.compile(r"[0-9]{1,10}")
MAX_TOKEN_ID = 2**31 - 1
# Each entry is added to the logits at every step of the sequence's batch.
MAX_LOGIT_BIAS = 300
# Token ids a completion's prompts may hold in all, whatever the model: no model's context is longer,
# and the worker holds each prompt to its model's own.
MAX_PROMPT_TOKEN_IDS = 1 << 20
# Roles whose messages must have content (OpenAI's OpenAPI description); an assistant's may
# leave it out when it calls tools.
_CONTENT_REQUIRED = {"system", "developer", "user", "tool"}


class ImageUrl(msgspec.Struct):
    url: str
    detail: str | None = None


class ContentPart(msgspec.Struct):
    type: str
    text: str | None = None
    # An image_url part's image: OpenAI's object, or its URL alone (as vLLM also takes it).
    image_url: ImageUrl | str | None = None

    @property
    def image(self) -> ImageUrl | None:
        return ImageUrl(self.image_url) if isinstance(self.image_url, str) else self.image_url


class _FunctionCall(msgspec.Struct):
    name: str
    arguments: str


class _ToolCallIn(msgspec.Struct):
    id: str
    function: _FunctionCall
    type: str = "function"


class Message(msgspec.Struct):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[_ToolCallIn] | None = None
    tool_call_id: str | None = None


class _FunctionDefinition(msgspec.Struct):
    name: str
    description: str | None = None
    parameters: dict[str, object] | None = None
    strict: bool | None = None


class Tool(msgspec.Struct):
    type: str
    function: _FunctionDefinition


class _FunctionName(msgspec.Struct):
    name: str


class _NamedToolChoice(msgspec.Struct):
    type: str
    function: _FunctionName


class _JsonSchemaFormat(msgspec.Struct):
    name: str
    schema: dict[str, object] | None = None
    strict: bool | None = None
    description: str | None = None


class _ResponseFormat(msgspec.Struct):
    type: str
    json_schema: _JsonSchemaFormat | None = None


_FORMAT_NAME = NAME


class _StreamOptions(msgspec.Struct):
    include_usage: bool = False


class CommonRequest(msgspec.Struct, kw_only=True):
    """The fields both endpoints take."""

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    # OpenAI's spec makes these nullable: null is the default (__post_init__).
    stream: bool | None = False
    stream_options: _StreamOptions | None = None
    n: int | None = 1
    # Extension (vLLM's name): generate exactly max_tokens.
    ignore_eos: bool = False
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    # Extensions (as in vLLM and mlx-lm's server).
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    # Extension (Ollama's): how long the model stays loaded after this request.
    keep_alive: float | str | None = None

    def __post_init__(self) -> None:
        if self.stream is None:
            self.stream = False
        if self.n is None:
            self.n = 1

    def asked_max_tokens(self) -> int | None:
        """The max_tokens the request names; None: up to the context's end (the worker decides)."""
        return self.max_tokens

    def _max_tokens_param(self) -> str:
        return "max_tokens"

    def validate(self, limits: RequestLimits) -> None:
        if not self.model:
            raise ServerError(ErrorKind.INVALID_REQUEST, "model must not be empty", param="model")
        max_tokens, param = self.asked_max_tokens(), self._max_tokens_param()
        if max_tokens is not None and not 1 <= max_tokens <= limits.max_tokens:
            raise ServerError(ErrorKind.INVALID_REQUEST, f"{param} must be within [1, {limits.max_tokens}], not {max_tokens}", param=param)
        if self.temperature is not None and not 0 <= self.temperature <= 2:
            raise ServerError(ErrorKind.INVALID_REQUEST, f"temperature must be within [0, 2], not {self.temperature}", param="temperature")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ServerError(ErrorKind.INVALID_REQUEST, f"top_p must be within (0, 1], not {self.top_p}", param="top_p")
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ServerError(ErrorKind.INVALID_REQUEST, f"at most {MAX_STOP_SEQUENCES} stop sequences, not {len(stops)}", param="stop")
        if any(not 0 < len(stop) <= MAX_STOP_LENGTH for stop in stops):
            raise ServerError(ErrorKind.INVALID_REQUEST, f"stop sequences must have 1 to {MAX_STOP_LENGTH} characters", param="stop")
        if self.seed is not None and not -(2**63) <= self.seed < 2**63:
            raise ServerError(ErrorKind.INVALID_REQUEST, "seed must fit in 64 bits", param="seed")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if value is not None and not -2 <= value <= 2:
                raise ServerError(ErrorKind.INVALID_REQUEST, f"{name} must be within [-2, 2], not {value}", param=name)
        if self.top_k is not None and not 0 <= self.top_k <= MAX_TOKEN_ID:
            raise ServerError(ErrorKind.INVALID_REQUEST, f"top_k must be within [0 (off), {MAX_TOKEN_ID}], not {self.top_k}", param="top_k")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            raise ServerError(ErrorKind.INVALID_REQUEST, f"min_p must be within [0, 1], not {self.min_p}", param="min_p")
        if self.repetition_penalty is not None and not 0 < self.repetition_penalty <= 10:
            raise ServerError(
                ErrorKind.INVALID_REQUEST, f"repetition_penalty must be within (0, 10], not {self.repetition_penalty}", param="repetition_penalty"
            )
        if len(self.logit_bias or ()) > MAX_LOGIT_BIAS:
            raise ServerError(ErrorKind.INVALID_REQUEST, f"logit_bias has at most {MAX_LOGIT_BIAS} entries, not {len(self.logit_bias or ())}", param="logit_bias")
        for token, bias in (self.logit_bias or {}).items():
            if not _TOKEN_ID_RE.fullmatch(token) or int(token) > MAX_TOKEN_ID:
                raise ServerError(
                    ErrorKind.INVALID_REQUEST, f"logit_bias keys are token ids (0 to {MAX_TOKEN_ID} in ASCII digits), not {token[:20]!r}", param="logit_bias"
                )
            if not -100 <= bias <= 100:
                raise ServerError(ErrorKind.INVALID_REQUEST, f"logit_bias values must be within [-100, 100], not {bias}", param="logit_bias")
        if not 1 <= self.n <= limits.max_choices:
            raise ServerError(ErrorKind.INVALID_REQUEST, f"n must be within [1, {limits.max_choices}], not {self.n}", param="n")
        if self.stream_options is not None and not self.stream:
            raise ServerError(ErrorKind.INVALID_REQUEST, "stream_options is only allowed with stream: true", param="stream_options")
        self.keep_alive_seconds()

    def keep_alive_seconds(self) -> float | None:
        """``keep_alive`` in seconds (negative: stay loaded; 0: unload when idle); None: the idle timeout."""
        return duration_seconds(self.keep_alive, param="keep_alive")

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(CommonRequest, kw_only=True):
    """POST /v1/chat/completions."""

    messages: list[Message]
    max_completion_tokens: int | None = None
    # Nullable in OpenAI's spec: null is false.
    logprobs: bool | None = False
    top_logprobs: int | None = None
    response_format: _ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: str | _NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.logprobs is None:
            self.logprobs = False

    def tool_mode(self) -> str | None:
        """None (no tools offered), "none", "auto", "required", or the one function's name."""
        if not self.tools:
            if self.tool_choice not in (None, "none", "auto"):
                raise ServerError(ErrorKind.INVALID_REQUEST, "tool_choice needs tools", param="tool_choice")
            return None
        choice = self.tool_choice if self.tool_choice is not None else "auto"
        if isinstance(choice, str):
            if choice not in ("none", "auto", "required"):
                raise ServerError(ErrorKind.INVALID_REQUEST, f"tool_choice is none, auto, required or a function, not {choice!r}", param="tool_choice")
            return choice
        names = {tool.function.name for tool in self.tools}
        if choice.type != "function" or choice.function.name not in names:
            raise ServerError(ErrorKind.INVALID_REQUEST, f"tool_choice names {choice.function.name!r}, which is not among the tools", param="tool_choice")
        return choice.function.name

    @property
    def forces_tool_call(self) -> bool:
        return self.tool_mode() not in (None, "none", "auto")

    def _forced_call_grammar(self, limits: RequestLimits) -> p.Grammar:
        """A call of the one function named, or of any offered (tool_choice "required")."""
        mode = self.tool_mode()
        assert self.tools is not None
        functions = [(tool.function.name, tool.function.parameters) for tool in self.tools if mode == "required" or tool.function.name == mode]
        return forced_call_grammar(functions, param="tools", max_bytes=limits.grammar_max_bytes)

    def grammar(self, limits: RequestLimits) -> p.Grammar | None:
        """What the output must match (response_format, a required tool call), if anything."""
        if self.forces_tool_call:
            if self.response_format is not None and self.response_format.type != "text":
                raise ServerError(ErrorKind.INVALID_REQUEST, "response_format cannot be combined with a required tool call", param="response_format")
            return self._forced_call_grammar(limits)
        response_format = self.response_format
        if response_format is None or response_format.type == "text":
            return None
        if response_format.type == "json_object":
            return json_schema_grammar(JSON_OBJECT, param="response_format", max_bytes=limits.grammar_max_bytes)
        if response_format.type == "json_schema":
            if response_format.json_schema is None:
                raise ServerError(ErrorKind.INVALID_REQUEST, "response_format json_schema needs its json_schema", param="response_format.json_schema")
            if not _FORMAT_NAME.fullmatch(response_format.json_schema.name):
                raise ServerError(
                    ErrorKind.INVALID_REQUEST, "response_format.json_schema.name must be 1 to 64 of a-z, A-Z, 0-9, _ and -", param="response_format.json_schema.name"
                )
            return json_schema_grammar(
                response_format.json_schema.schema or JSON_OBJECT,
                param="response_format.json_schema.schema",
                max_bytes=limits.grammar_max_bytes,
            )
        raise ServerError(
            ErrorKind.INVALID_REQUEST,
            f"response_format.type is one of text, json_object, json_schema, not {response_format.type!r}",
            param="response_format.type",
        )

    def asked_max_tokens(self) -> int | None:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return super().asked_max_tokens()

    def _max_tokens_param(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"

    def validate(self, limits: RequestLimits) -> None:
        super().validate(limits)
        if self.top_logprobs is not None:
            if not 0 <= self.top_logprobs <= 20:
                raise ServerError(ErrorKind.INVALID_REQUEST, f"top_logprobs must be within [0, 20], not {self.top_logprobs}", param="top_logprobs")
            if not self.logprobs:
                raise ServerError(ErrorKind.INVALID_REQUEST, "top_logprobs needs logprobs: true", param="top_logprobs")
        if not self.messages:
            raise ServerError(ErrorKind.INVALID_REQUEST, "messages must not be empty", param="messages")
        for index, tool in enumerate(self.tools or ()):
            if tool.type != "function":
                raise ServerError(ErrorKind.INVALID_REQUEST, f"tools[{index}].type must be function, not {tool.type!r}", param=f"tools[{index}].type")
            if not _FORMAT_NAME.fullmatch(tool.function.name):
                raise ServerError(
                    ErrorKind.INVALID_REQUEST, "a function name is 1 to 64 of a-z, A-Z, 0-9, _ and -", param=f"tools[{index}].function.name"
                )
        self.grammar(limits)
        for index, message in enumerate(self.messages):
            if message.role not in _ROLES:
                raise ServerError(
                    ErrorKind.INVALID_REQUEST, f"messages[{index}].role {message.role!r} is not one of {sorted(_ROLES)}", param=f"messages[{index}].role"
                )
            if message.content is None and (message.role in _CONTENT_REQUIRED or not message.tool_calls):
                needs = "content or tool_calls" if message.role == "assistant" else "content"
                raise ServerError(ErrorKind.INVALID_REQUEST, f"messages[{index}]: a {message.role} message needs {needs}", param=f"messages[{index}].content")
            if message.content == []:
                raise ServerError(ErrorKind.INVALID_REQUEST, f"messages[{index}].content must not be an empty list", param=f"messages[{index}].content")
            # Templates write a call's name into the prompt as it is: the same names as tools'.
            for number, call in enumerate(message.tool_calls or ()):
                if not _FORMAT_NAME.fullmatch(call.function.name):
                    raise ServerError(
                        ErrorKind.INVALID_REQUEST,
                        "a function name is 1 to 64 of a-z, A-Z, 0-9, _ and -",
                        param=f"messages[{index}].tool_calls[{number}].function.name",
                    )
            if isinstance(message.content, list):
                for number, part in enumerate(message.content):
                    _check_part(part, message.role, f"messages[{index}].content[{number}]")


def _check_part(part: ContentPart, role: str, where: str) -> None:
    if part.type == "text" and part.text is not None:
        return
    if part.type != "image_url":
        raise ServerError(ErrorKind.INVALID_REQUEST, f"{where}: a content part is text (with its text) or image_url, not {part.type!r}", param=where)
    image = part.image
    if image is None:
        raise ServerError(ErrorKind.INVALID_REQUEST, f"{where}: an image_url part needs its image_url", param=f"{where}.image_url")
    if role != "user":
        # As OpenAI: only a user's message may hold an image.
        raise ServerError(ErrorKind.INVALID_REQUEST, f"{where}: images are only allowed in user messages, not in a {role} message", param=where)
    check_detail(image.detail, f"{where}.image_url.detail")


def _prompt_error(message: str) -> ServerError:
    return ServerError(
        ErrorKind.INVALID_REQUEST, f"prompt is a string, a list of strings, a list of token ids or a list of lists of them: {message}", param="prompt"
    )


def _token_ids(value: object) -> tuple[int, ...]:
    """A prompt of token ids, checked for what the orchestrator can know (the worker checks them against the vocabulary)."""
    if not isinstance(value, list) or not value:
        raise _prompt_error("a list of token ids must not be empty")
    # bool is an int to Python, not to JSON.
    if any(type(token) is not int or not 0 <= token <= MAX_TOKEN_ID for token in value):
        raise _prompt_error(f"token ids are integers within [0, {MAX_TOKEN_ID}]")
    return tuple(value)


class CompletionRequest(CommonRequest, kw_only=True):
    """POST /v1/completions."""

    # A string, strings, token ids or lists of token ids (OpenAI's four forms; ``prompts`` reads them).
    prompt: str | list[object]
    # The legacy API's logprobs: how many alternatives per token (0 to 5), or null for none.
    logprobs: int | None = None
    # Nullable in OpenAI's spec: null is false.
    echo: bool | None = False
    # Candidates per prompt, of which the n with the highest mean log probability are returned; null: n.
    best_of: int | None = None
    # Insertion (text after the completion) is not supported: a 400 rather than ignored.
    suffix: str | None = None

    def prompts(self) -> tuple[str | tuple[int, ...], ...]:
        """The prompts: strings, or token ids."""
        prompt = self.prompt
        if isinstance(prompt, str):
            prompts: tuple[str | tuple[int, ...], ...] = (prompt,)
        elif prompt and all(isinstance(each, str) for each in prompt):
            prompts = tuple(prompt)  # type: ignore[arg-type]
        elif prompt and all(isinstance(each, list) for each in prompt):
            prompts = tuple(_token_ids(each) for each in prompt)
        elif prompt and not any(isinstance(each, (str, list)) for each in prompt):
            prompts = (_token_ids(prompt),)
        else:
            raise _prompt_error("not an empty list, nor a mixture")
        if any(each == "" for each in prompts):
            raise ServerError(ErrorKind.INVALID_REQUEST, "prompt must not be empty", param="prompt")
        if sum(len(each) for each in prompts if isinstance(each, tuple)) > MAX_PROMPT_TOKEN_IDS:
            raise _prompt_error(f"at most {MAX_PROMPT_TOKEN_IDS} token ids in all")
        return prompts

    @property
    def candidates(self) -> int:
        """Sequences per prompt: best_of, or n."""
        return self.n if self.best_of is None else self.best_of

    def validate(self, limits: RequestLimits) -> None:
        super().validate(limits)
        if self.echo is None:
            self.echo = False
        if self.logprobs is not None and not 0 <= self.logprobs <= 5:
            raise ServerError(ErrorKind.INVALID_REQUEST, f"logprobs must be within [0, 5], not {self.logprobs}", param="logprobs")
        if self.suffix:
            raise ServerError(ErrorKind.INVALID_REQUEST, "suffix (inserting text before a suffix) is not supported", param="suffix")
        if self.best_of is not None:
            if not self.n <= self.best_of <= limits.max_choices:
                raise ServerError(
                    ErrorKind.INVALID_REQUEST, f"best_of must be within [n ({self.n}), {limits.max_choices}], not {self.best_of}", param="best_of"
                )
            if self.stream and self.best_of > self.n:
                raise ServerError(ErrorKind.INVALID_REQUEST, "best_of greater than n cannot be streamed", param="best_of")
        prompts = len(self.prompts())
        if prompts * self.candidates > limits.max_choices:
            param = "prompt" if prompts > 1 else "best_of"
            raise ServerError(
                ErrorKind.INVALID_REQUEST,
                f"{prompts} prompts with {self.candidates} choices each make {prompts * self.candidates} sequences; "
                f"at most {limits.max_choices} per request (MLX_MAX_CHOICES)",
                param=param,
            )
