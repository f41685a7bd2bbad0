"""The Responses API's request bodies (msgspec structs), and the checks that make a bad one a 400.

As on the OpenAI surface, anything malformed is a 400 in OpenAI's shape
naming the field, before any 200, and unknown fields are ignored. Fields
that ask for what a local server does not have and that would change the
answer (hosted tools, background runs, stored prompts, conversations) are
refused by name; fields that only tune OpenAI's service (``prompt_cache_key``,
``service_tier``, ``safety_identifier``, ``user``) are accepted and ignored.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from ... import _protocol as p
from ..._errors import ErrorKind, ServerError
from .._common import RequestLimits
from .._structured import JSON_OBJECT, NAME, forced_call_grammar, json_schema_grammar

__all__ = ["CountRequest", "CreateRequest", "InputItem", "Part", "Tool"]

# OpenAI's limits on metadata.
MAX_METADATA_KEYS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
# Within what the worker's counter takes.
MAX_TOOL_CALLS = 2**31 - 1
# The efforts that turn a model's thinking off where its template has a switch; the others turn it on.
_NO_THINKING = {"none", "minimal"}
_EFFORTS = _NO_THINKING | {"low", "medium", "high", "xhigh", "max"}
_INCLUDES = {
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
    "reasoning.encrypted_content",
    "message.output_text.logprobs",
}
LOGPROBS_INCLUDE = "message.output_text.logprobs"


Text = Annotated[str, msgspec.Meta(max_length=10_485_760)]


class Part(msgspec.Struct, kw_only=True):
    """A content part: input_text, output_text, refusal, reasoning_text, summary_text, input_image (input_file is refused)."""

    type: str
    text: str | None = None
    refusal: str | None = None
    # input_image: a data: or http(s) URL (a file_id is refused: there is no file store).
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None


class InputItem(msgspec.Struct, kw_only=True):
    """One input item: a message (``type`` may be left out), function_call, function_call_output, reasoning or item_reference."""

    type: str | None = "message"
    id: str | None = None
    status: str | None = None
    # message
    role: str | None = None
    # A message's text or parts; a reasoning item's reasoning_text parts.
    content: Text | list[Part] | None = None
    # function_call, function_call_output
    call_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    name: str | None = None
    arguments: Text | None = None
    output: Text | list[Part] | None = None
    # reasoning
    summary: list[Part] | None = None
    encrypted_content: str | None = None


class Tool(msgspec.Struct, kw_only=True):
    """A function tool, or a namespace of them; any other type is a hosted tool, which this server does not have."""

    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, object] | None = None
    strict: bool | None = None
    # A namespace's functions (Codex CLI groups its agent tools so): offered to the model as functions of their own.
    tools: list[Tool] | None = None


class _AllowedTool(msgspec.Struct, kw_only=True, omit_defaults=True):
    type: str
    name: str | None = None


class ToolChoice(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``{"type": "function", "name": ...}``, or ``{"type": "allowed_tools", "mode": ..., "tools": [...]}``."""

    type: str
    name: str | None = None
    mode: str | None = None
    tools: list[_AllowedTool] | None = None


class _Format(msgspec.Struct, kw_only=True, omit_defaults=True):
    type: str
    name: str | None = None
    schema: dict[str, object] | None = None
    strict: bool | None = None
    description: str | None = None


class TextParam(msgspec.Struct, kw_only=True):
    format: _Format | None = None
    # Accepted and ignored: a local model has no verbosity switch.
    verbosity: str | None = None


class Reasoning(msgspec.Struct, kw_only=True):
    effort: str | None = None
    # Accepted and ignored: a local model's reasoning is given as it is, never summarised.
    summary: str | None = None
    generate_summary: str | None = None


class _InputFields(msgspec.Struct, kw_only=True):
    """What POST /v1/responses and POST /v1/responses/input_tokens share: everything that shapes the prompt."""

    model: str | None = None
    input: Text | list[InputItem] | None = None
    instructions: Text | None = None
    previous_response_id: str | None = None
    tools: list[Tool] | None = None
    tool_choice: str | ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_tool_calls: int | None = None
    text: TextParam | None = None
    reasoning: Reasoning | None = None
    truncation: str | None = None
    # Refused when given: a stored conversation object (the Conversations API).
    conversation: object | None = None

    def validate(self, limits: RequestLimits) -> None:
        if not self.model:
            raise ServerError(ErrorKind.INVALID_REQUEST, "model is required", param="model")
        if self.conversation is not None:
            raise ServerError(
                ErrorKind.INVALID_REQUEST, "conversation (the Conversations API) is not supported; use previous_response_id", param="conversation"
            )
        if self.truncation not in (None, "disabled"):
            # Dropping items to fit needs the prompt's tokens, which only the worker knows.
            raise ServerError(
                ErrorKind.INVALID_REQUEST,
                f"truncation {self.truncation!r} is not supported: this server answers a prompt over the context with a 400 (truncation 'disabled')",
                param="truncation",
            )
        if self.input is None and self.previous_response_id is None:
            raise ServerError(ErrorKind.INVALID_REQUEST, "input is required", param="input")
        if self.input == [] and self.previous_response_id is None:
            raise ServerError(ErrorKind.INVALID_REQUEST, "input must not be an empty list", param="input")
        if self.max_tool_calls is not None and not 1 <= self.max_tool_calls <= MAX_TOOL_CALLS:
            raise ServerError(
                ErrorKind.INVALID_REQUEST, f"max_tool_calls must be within [1, {MAX_TOOL_CALLS}], not {self.max_tool_calls}", param="max_tool_calls"
            )
        if self.text is not None and self.text.verbosity not in (None, "low", "medium", "high"):
            raise ServerError(ErrorKind.INVALID_REQUEST, f"text.verbosity is low, medium or high, not {self.text.verbosity[:20]!r}", param="text.verbosity")
        if self.reasoning is not None and self.reasoning.effort is not None and self.reasoning.effort not in _EFFORTS:
            raise ServerError(
                ErrorKind.INVALID_REQUEST, f"reasoning.effort is one of {sorted(_EFFORTS)}, not {self.reasoning.effort!r}", param="reasoning.effort"
            )
        for index, tool in enumerate(self.tools or ()):
            if tool.type == "namespace":
                _check_name(tool, f"tools[{index}]")
                if not tool.tools:
                    raise ServerError(ErrorKind.INVALID_REQUEST, f"tools[{index}]: a namespace needs its tools", param=f"tools[{index}].tools")
                for number, inner in enumerate(tool.tools):
                    _check_function(inner, f"tools[{index}].tools[{number}]")
            else:
                _check_function(tool, f"tools[{index}]")
        names = [tool.name for tool, _ in self.functions()]
        if len(set(names)) != len(names):
            raise ServerError(ErrorKind.INVALID_REQUEST, "tools: function names must be unique, also across namespaces", param="tools")
        self.grammar(limits)

    def functions(self) -> list[tuple[Tool, str | None]]:
        """Every function tool, and the namespace it is in (None: none)."""
        found: list[tuple[Tool, str | None]] = []
        for tool in self.tools or ():
            if tool.type == "namespace":
                found.extend((inner, tool.name) for inner in tool.tools or ())
            else:
                found.append((tool, None))
        return found

    def namespaces(self) -> dict[str, str]:
        """The namespace of each function in one, by the function's name (its calls name it)."""
        return {tool.name: namespace for tool, namespace in self.functions() if namespace is not None and tool.name is not None}

    @property
    def thinking(self) -> bool | None:
        """The model's thinking switch: None (the template's default) unless reasoning.effort names one."""
        effort = self.reasoning.effort if self.reasoning is not None else None
        return None if effort is None else effort not in _NO_THINKING

    def tool_mode(self) -> tuple[str, frozenset[str]]:
        """"none", "auto" or "required", and the names of the functions the model may call."""
        names = [tool.name for tool, _ in self.functions() if tool.name is not None]
        choice = self.tool_choice if self.tool_choice is not None else "auto"
        if isinstance(choice, str):
            if choice not in ("none", "auto", "required"):
                raise ServerError(ErrorKind.INVALID_REQUEST, f"tool_choice is none, auto, required or an object, not {choice!r}", param="tool_choice")
            mode, allowed = choice, names
        elif choice.type == "function":
            if choice.name not in names:
                raise ServerError(ErrorKind.INVALID_REQUEST, f"tool_choice names {choice.name!r}, which is not among the tools", param="tool_choice.name")
            mode, allowed = "required", [choice.name]
        elif choice.type == "allowed_tools":
            if choice.mode not in ("auto", "required"):
                raise ServerError(ErrorKind.INVALID_REQUEST, "tool_choice.mode is auto or required", param="tool_choice.mode")
            allowed = [tool.name for tool in choice.tools or () if tool.type == "function" and tool.name in names]
            if len(allowed) != len(choice.tools or ()) or not allowed:
                raise ServerError(ErrorKind.INVALID_REQUEST, "tool_choice.tools must name function tools among the tools", param="tool_choice.tools")
            mode = choice.mode
        else:
            raise ServerError(
                ErrorKind.INVALID_REQUEST, f"tool_choice: the hosted tool {choice.type!r} is not available on this server", param="tool_choice.type"
            )
        if mode == "required" and not allowed:
            raise ServerError(ErrorKind.INVALID_REQUEST, "tool_choice required needs tools", param="tool_choice")
        return mode, frozenset(allowed)

    def offered_tools(self) -> list[Tool]:
        """The tools the model is told of: none with tool_choice none, else those it may call."""
        mode, allowed = self.tool_mode()
        if mode == "none":
            return []
        return [tool for tool, _ in self.functions() if tool.name in allowed]

    @property
    def forced_tool_choice(self) -> str | None:
        """The tool choice as its 400 shows it, when it forces a call."""
        mode, _ = self.tool_mode()
        if mode != "required":
            return None
        choice = self.tool_choice
        return repr(choice if isinstance(choice, str) else msgspec.to_builtins(choice))

    def grammar(self, limits: RequestLimits) -> p.Grammar | None:
        """What the output must match (text.format, a required tool call), if anything."""
        text_format = self.text.format if self.text is not None else None
        if self.forced_tool_choice is not None:
            if text_format is not None and text_format.type != "text":
                raise ServerError(ErrorKind.INVALID_REQUEST, "text.format cannot be combined with a required tool call", param="text.format")
            functions = [(tool.name or "", tool.parameters) for tool in self.offered_tools()]
            return forced_call_grammar(functions, param="tools", max_bytes=limits.grammar_max_bytes)
        if text_format is None or text_format.type == "text":
            return None
        if text_format.type == "json_object":
            return json_schema_grammar(JSON_OBJECT, param="text.format", max_bytes=limits.grammar_max_bytes)
        if text_format.type == "json_schema":
            if text_format.name is None or not NAME.fullmatch(text_format.name):
                raise ServerError(ErrorKind.INVALID_REQUEST, "text.format.name must be 1 to 64 of a-z, A-Z, 0-9, _ and -", param="text.format.name")
            if text_format.schema is None:
                raise ServerError(ErrorKind.INVALID_REQUEST, "text.format json_schema needs its schema", param="text.format.schema")
            return json_schema_grammar(text_format.schema, param="text.format.schema", max_bytes=limits.grammar_max_bytes)
        raise ServerError(
            ErrorKind.INVALID_REQUEST, f"text.format.type is one of text, json_object, json_schema, not {text_format.type!r}", param="text.format.type"
        )


def _check_name(tool: Tool, param: str) -> None:
    if tool.name is None or not NAME.fullmatch(tool.name):
        raise ServerError(ErrorKind.INVALID_REQUEST, "a tool's name is 1 to 64 of a-z, A-Z, 0-9, _ and -", param=f"{param}.name")


def _check_function(tool: Tool, param: str) -> None:
    if tool.type != "function":
        raise ServerError(
            ErrorKind.INVALID_REQUEST,
            f"{param}: the hosted tool {tool.type!r} is not available on this server; only function tools (and namespaces of them) are",
            param=f"{param}.type",
        )
    _check_name(tool, param)


class CountRequest(_InputFields, kw_only=True):
    """POST /v1/responses/input_tokens."""


class CreateRequest(_InputFields, kw_only=True):
    """POST /v1/responses."""

    model: str  # type: ignore[assignment]
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_logprobs: int | None = None
    stream: bool | None = False
    stream_options: dict[str, object] | None = None
    store: bool | None = True
    metadata: dict[str, str] | None = None
    include: list[str] | None = None
    # Accepted and ignored (API.md lists them): they tune OpenAI's service, not the answer.
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    user: str | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    # Refused when asked for: no background runs or stored prompts here.
    background: bool | None = None
    prompt: object | None = None

    def __post_init__(self) -> None:
        if self.stream is None:
            self.stream = False
        if self.store is None:
            self.store = True

    @property
    def logprobs(self) -> bool:
        return LOGPROBS_INCLUDE in (self.include or ()) or bool(self.top_logprobs)

    def validate(self, limits: RequestLimits) -> None:
        super().validate(limits)
        if self.background:
            raise ServerError(ErrorKind.INVALID_REQUEST, "background responses are not supported", param="background")
        if self.prompt is not None:
            raise ServerError(ErrorKind.INVALID_REQUEST, "prompt (a stored prompt template) is not supported; send input and instructions", param="prompt")
        if self.max_output_tokens is not None and not 16 <= self.max_output_tokens <= limits.max_tokens:
            raise ServerError(
                ErrorKind.INVALID_REQUEST,
                f"max_output_tokens must be within [16, {limits.max_tokens}], not {self.max_output_tokens}",
                param="max_output_tokens",
            )
        if self.temperature is not None and not 0 <= self.temperature <= 2:
            raise ServerError(ErrorKind.INVALID_REQUEST, f"temperature must be within [0, 2], not {self.temperature}", param="temperature")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ServerError(ErrorKind.INVALID_REQUEST, f"top_p must be within (0, 1], not {self.top_p}", param="top_p")
        if self.top_logprobs is not None and not 0 <= self.top_logprobs <= 20:
            raise ServerError(ErrorKind.INVALID_REQUEST, f"top_logprobs must be within [0, 20], not {self.top_logprobs}", param="top_logprobs")
        for index, included in enumerate(self.include or ()):
            if included not in _INCLUDES:
                raise ServerError(ErrorKind.INVALID_REQUEST, f"include[{index}] {included[:80]!r} is not one of {sorted(_INCLUDES)}", param=f"include[{index}]")
        metadata = self.metadata or {}
        if len(metadata) > MAX_METADATA_KEYS:
            raise ServerError(ErrorKind.INVALID_REQUEST, f"metadata has at most {MAX_METADATA_KEYS} keys, not {len(metadata)}", param="metadata")
        for key, value in metadata.items():
            if len(key) > MAX_METADATA_KEY:
                raise ServerError(ErrorKind.INVALID_REQUEST, f"metadata keys have at most {MAX_METADATA_KEY} characters", param="metadata")
            if len(value) > MAX_METADATA_VALUE:
                raise ServerError(ErrorKind.INVALID_REQUEST, f"metadata values have at most {MAX_METADATA_VALUE} characters", param=f"metadata.{key}")
