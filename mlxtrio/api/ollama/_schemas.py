"""Ollama's request bodies (msgspec structs), and the checks that make a bad one a 400 before any 200.

Fields Ollama's clients send that change nothing here are accepted: msgspec
ignores undeclared fields, and ``options`` that set up Ollama's own runner
(``num_gpu``, ``num_thread`` ...) are read only to be dropped. An option
Ollama does not know either is dropped with a warning in the log, as Ollama
does. What would change the answer and cannot be honoured (``suffix``, a
``template`` of the request's own, a token ``context``) is a 400 that says so.
"""

from __future__ import annotations

import msgspec

from ... import _protocol as p
from ..._errors import ErrorKind, ServerError
from .._common import RequestLimits
from .._durations import duration_seconds
from .._structured import JSON_OBJECT, NAME, forced_call_grammar, json_schema_grammar

__all__ = ["ChatRequest", "GenerateRequest", "Message", "ModelRequest", "Options", "Tool", "invalid", "known_option"]

# Each stop string is searched for in the held text at every token.
MAX_STOP_SEQUENCES = 16
MAX_STOP_LENGTH = 512
# Token ids within int32, as MLX indexes them.
MAX_TOP_K = 2**31 - 1
# As OpenAI's chat completions allow.
MAX_TOP_LOGPROBS = 20
# Ollama's think levels (for the models that take one): here each turns thinking on.
THINK_LEVELS = ("high", "medium", "low")
_ROLES = ("system", "user", "assistant", "tool")
# num_predict: -1 is "until the context ends", -2 "fill the context"; both are the server's cap here.
_UNBOUNDED = (-1, -2)
# Options Ollama takes that set up its runner, or samplers mlx-lm has not: accepted, and they change nothing here.
INERT_OPTIONS = frozenset(
    {
        "numa", "num_batch", "num_gpu", "main_gpu", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mmap",
        "use_mlock", "embedding_only", "num_thread", "num_keep", "tfs_z", "typical_p", "mirostat", "mirostat_tau",
        "mirostat_eta", "penalize_newline",
    }
)  # fmt: skip


def invalid(param: str, message: str) -> ServerError:
    return ServerError(ErrorKind.INVALID_REQUEST, f"{param}: {message}", param=param)


def _within(param: str, value: float | None, low: float, high: float, *, open_low: bool = False) -> None:
    if value is None:
        return
    if not (low < value <= high if open_low else low <= value <= high):
        raise invalid(param, f"must be within {'(' if open_low else '['}{low:g}, {high:g}], not {value}")


class Options(msgspec.Struct, kw_only=True):
    """The options that change the answer here (Ollama's names)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    num_predict: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    repeat_penalty: float | None = None
    # The window the repeat penalty looks back over is mlx-lm's own (20 tokens): accepted, not used.
    repeat_last_n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # The context is the model's own; a KV cache grows as the sequence does: accepted, not used.
    num_ctx: int | None = None

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def validate(self, limits: RequestLimits) -> None:
        _within("options.temperature", self.temperature, 0, 2)
        _within("options.top_p", self.top_p, 0, 1, open_low=True)
        _within("options.top_k", self.top_k, 0, MAX_TOP_K)
        _within("options.min_p", self.min_p, 0, 1)
        _within("options.repeat_penalty", self.repeat_penalty, 0, 10, open_low=True)
        _within("options.presence_penalty", self.presence_penalty, -2, 2)
        _within("options.frequency_penalty", self.frequency_penalty, -2, 2)
        _within("options.repeat_last_n", self.repeat_last_n, -1, MAX_TOP_K)
        _within("options.num_ctx", self.num_ctx, 0, MAX_TOP_K)
        if self.num_predict is not None and self.num_predict not in _UNBOUNDED and self.num_predict < 1:
            raise invalid("options.num_predict", f"must be 1 or more, or -1 (no limit), not {self.num_predict}")
        if self.seed is not None and not -(2**63) <= self.seed < 2**63:
            raise invalid("options.seed", "must fit in 64 bits")
        stops = self.stops()
        if len(stops) > MAX_STOP_SEQUENCES:
            raise invalid("options.stop", f"at most {MAX_STOP_SEQUENCES} stop sequences, not {len(stops)}")
        if any(not 0 < len(stop) <= MAX_STOP_LENGTH for stop in stops):
            raise invalid("options.stop", f"stop sequences must have 1 to {MAX_STOP_LENGTH} characters")

    def sampling(self, limits: RequestLimits, grammar: p.Grammar | None) -> p.SamplingParams:
        """As the worker samples by them: Ollama's defaults (temperature 0.8, top_k 40, top_p 0.9) where unset."""
        asked = self.num_predict
        return p.SamplingParams(
            # A ceiling: lowered to the server's cap here, and to what the context leaves by the worker.
            max_tokens=limits.max_tokens if asked is None or asked in _UNBOUNDED else min(asked, limits.max_tokens),
            fit_context=True,
            temperature=0.8 if self.temperature is None else self.temperature,
            top_p=0.9 if self.top_p is None else self.top_p,
            top_k=40 if self.top_k is None else self.top_k,
            min_p=self.min_p or 0.0,
            stop=self.stops(),
            seed=self.seed,
            repetition_penalty=self.repeat_penalty or 0.0,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            grammar=grammar,
        )


def known_option(name: str) -> bool:
    return name in Options.__struct_fields__ or name in INERT_OPTIONS


class _Function(msgspec.Struct):
    name: str
    # An object in Ollama's shape; JSON text (OpenAI's) is taken too.
    arguments: dict[str, object] | str = msgspec.field(default_factory=dict)


class ToolCall(msgspec.Struct):
    function: _Function
    id: str | None = None


class Message(msgspec.Struct):
    role: str
    content: str | None = None
    # Base64 images (a user's).
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    thinking: str | None = None
    # A tool message's tool, by name (Ollama's), or the call it answers (OpenAI's).
    tool_name: str | None = None
    tool_call_id: str | None = None


class _FunctionDefinition(msgspec.Struct):
    name: str
    description: str | None = None
    parameters: dict[str, object] | None = None


class Tool(msgspec.Struct):
    function: _FunctionDefinition
    type: str = "function"


class _FunctionName(msgspec.Struct):
    name: str


class _NamedToolChoice(msgspec.Struct):
    function: _FunctionName
    type: str = "function"


class ModelRequest(msgspec.Struct, kw_only=True):
    """A body that names a model (/api/show, /api/pull ...): ``model``, or ``name`` as older clients send it."""

    model: str | None = None
    name: str | None = None
    stream: bool | None = None

    def model_name(self) -> str:
        named = self.model if self.model is not None else self.name
        if not named:
            raise invalid("model", "model is required")
        return named


class _Request(msgspec.Struct, kw_only=True):
    """What /api/chat and /api/generate share."""

    model: str
    format: str | dict[str, object] | None = None
    options: Options | None = None
    # Unset (or null): a stream, as Ollama's default is.
    stream: bool | None = None
    keep_alive: float | str | None = None
    think: bool | str | None = None
    # Each answer token's log probability, and this many alternatives.
    logprobs: bool | None = None
    top_logprobs: int | None = None

    @property
    def streams(self) -> bool:
        return self.stream is not False

    def keep_alive_seconds(self) -> float | None:
        """``keep_alive`` in seconds (negative: stay loaded; 0: unload when idle); None: the idle timeout."""
        return duration_seconds(self.keep_alive, param="keep_alive")

    def validate(self, limits: RequestLimits) -> None:
        if not self.model:
            raise invalid("model", "model is required")
        if isinstance(self.format, str) and self.format not in ("", "json"):
            raise invalid("format", f'"json" or a JSON schema, not {self.format[:40]!r}')
        if isinstance(self.think, str) and self.think not in THINK_LEVELS:
            raise invalid("think", f"true, false or one of {', '.join(THINK_LEVELS)}, not {self.think[:20]!r}")
        if self.thinks is True and self.format_grammar(limits) is not None:
            # The format's grammar would hold from the first token, inside the thinking.
            raise invalid("think", "thinking cannot be combined with format here")
        if self.options is not None:
            self.options.validate(limits)
        _within("top_logprobs", self.top_logprobs, 0, MAX_TOP_LOGPROBS)
        self.keep_alive_seconds()

    @property
    def thinks(self) -> bool | None:
        """The chat template's thinking switch (None: the template's default)."""
        return None if self.think is None else self.think is not False

    def format_grammar(self, limits: RequestLimits) -> p.Grammar | None:
        if self.format is None or self.format == "":
            return None
        schema = JSON_OBJECT if self.format == "json" else self.format
        return json_schema_grammar(schema, param="format", max_bytes=limits.grammar_max_bytes)

    def thinking_switch(self, limits: RequestLimits) -> bool | None:
        # A format's grammar holds from the first token: no room for thinking before it.
        return False if self.format_grammar(limits) is not None else self.thinks

    @property
    def wants_logprobs(self) -> bool:
        return bool(self.logprobs or self.top_logprobs)

    def sampling(self, limits: RequestLimits, grammar: p.Grammar | None) -> p.SamplingParams:
        params = (self.options or Options()).sampling(limits, grammar)
        return msgspec.structs.replace(params, logprobs=self.wants_logprobs, top_logprobs=self.top_logprobs or 0)


class ChatRequest(_Request, kw_only=True):
    """POST /api/chat; no messages: only load the model (or unload it, with keep_alive 0)."""

    messages: list[Message] = msgspec.field(default_factory=list)
    tools: list[Tool] | None = None
    # Extension (OpenAI's values): "auto" (the default), "none", "required", or one function by name.
    tool_choice: str | _NamedToolChoice | None = None

    def validate(self, limits: RequestLimits) -> None:
        super().validate(limits)
        for index, message in enumerate(self.messages):
            where = f"messages.{index}"
            if message.role not in _ROLES:
                raise invalid(f"{where}.role", f"one of {', '.join(_ROLES)}, not {message.role[:20]!r}")
            if message.images and message.role != "user":
                raise invalid(f"{where}.images", "images belong in user messages")
            if message.tool_calls and message.role != "assistant":
                raise invalid(f"{where}.tool_calls", "tool calls belong in assistant messages")
            for number, call in enumerate(message.tool_calls or ()):
                if not NAME.fullmatch(call.function.name):
                    raise invalid(f"{where}.tool_calls.{number}.function.name", "a function name is 1 to 64 of a-z, A-Z, 0-9, _ and -")
        names: set[str] = set()
        for index, tool in enumerate(self.tools or ()):
            if tool.type != "function":
                raise invalid(f"tools.{index}.type", f"only function tools are supported, not {tool.type[:20]!r}")
            if not NAME.fullmatch(tool.function.name):
                raise invalid(f"tools.{index}.function.name", "a function name is 1 to 64 of a-z, A-Z, 0-9, _ and -")
            if tool.function.name in names:
                raise invalid(f"tools.{index}.function.name", f"tool names must be unique; {tool.function.name!r} is there twice")
            names.add(tool.function.name)
        mode = self.tool_mode()
        if mode not in (None, "none", "auto", "required") and mode not in names:
            raise invalid("tool_choice", f"{mode!r} is not among the tools")
        if self.forces_tool_call and self.format_grammar(limits) is not None:
            raise invalid("tool_choice", "a required tool call cannot be combined with format")
        if self.forces_tool_call and self.thinks is True:
            # The forcing grammar would hold from the first token, inside the thinking.
            raise invalid("think", "thinking cannot be combined with a required tool call here")

    def tool_mode(self) -> str | None:
        """None (no tools), "none", "auto", "required", or the one function's name."""
        choice = self.tool_choice
        if isinstance(choice, str) and choice not in ("none", "auto", "required"):
            raise invalid("tool_choice", f"none, auto, required or a function, not {choice[:20]!r}")
        if not self.tools:
            if choice not in (None, "none", "auto"):
                raise invalid("tool_choice", "tool_choice needs tools")
            return None
        if choice is None:
            return "auto"
        return choice if isinstance(choice, str) else choice.function.name

    @property
    def forces_tool_call(self) -> bool:
        return self.tool_mode() not in (None, "none", "auto")

    def grammar(self, limits: RequestLimits) -> p.Grammar | None:
        """A forced call, or the format's JSON schema, if either."""
        if not self.forces_tool_call:
            return self.format_grammar(limits)
        mode = self.tool_mode()
        functions = [(tool.function.name, tool.function.parameters) for tool in self.tools or () if mode in ("required", tool.function.name)]
        return forced_call_grammar(functions, param="tool_choice", max_bytes=limits.grammar_max_bytes)

    def thinking_switch(self, limits: RequestLimits) -> bool | None:
        return False if self.forces_tool_call else super().thinking_switch(limits)


class GenerateRequest(_Request, kw_only=True):
    """POST /api/generate; no prompt: only load the model (or unload it, with keep_alive 0)."""

    prompt: str | None = None
    system: str | None = None
    # The prompt as it is, no chat template around it.
    raw: bool | None = None
    images: list[str] | None = None
    suffix: str | None = None
    template: str | None = None
    context: list[int] | None = None

    def validate(self, limits: RequestLimits) -> None:
        super().validate(limits)
        if self.suffix:
            raise invalid("suffix", "inserting text before a suffix (fill-in-the-middle) is not supported")
        if self.template:
            raise invalid("template", "a request's own template is not supported: the model's chat template is used (or the config file's chat_template)")
        if self.context:
            raise invalid(
                "context", "a token context is not supported (it is deprecated in Ollama too): send the conversation to /api/chat as messages"
            )
        if self.raw and self.images:
            raise invalid("images", "images need the chat template: not with raw")
