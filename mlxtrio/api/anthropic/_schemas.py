"""Anthropic's Messages API request bodies (msgspec structs), and the checks that make a bad one a 400.

Anything malformed becomes a 400 in Anthropic's shape, naming the field,
before any 200. Fields that real clients send for features a local server
does not have, and that cannot change the answer (``cache_control``
anywhere, ``service_tier``, ``context_management``, ``metadata``,
``output_config.effort``, a tool's
``defer_loading``), are accepted: msgspec ignores undeclared fields, and the
declared ones are read only to be checked. What would change the answer and
cannot be honoured (documents, images by file id, server tools, MCP servers,
containers, continuing an assistant message) is a 400 that says so.
"""

from __future__ import annotations

import re

import msgspec

from ..._errors import ErrorKind, ServerError
from .._common import RequestLimits

__all__ = [
    "Base64Source",
    "CountTokensRequest",
    "ImageBlock",
    "Message",
    "MessagesRequest",
    "RedactedThinkingBlock",
    "TextBlock",
    "ThinkingBlock",
    "ToolReferenceBlock",
    "ToolResultBlock",
    "ToolUseBlock",
]

# Anthropic sets no count; each stop string is searched for in the held text at every token.
MAX_STOP_SEQUENCES = 16
MAX_STOP_LENGTH = 512
# Token ids within int32, as MLX indexes them.
MAX_TOP_K = 2**31 - 1
# Templates write a tool's name into the prompt as it is: the characters Anthropic allows.
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")
_ROLES = ("user", "assistant", "system")


def invalid(param: str, message: str) -> ServerError:
    return ServerError(ErrorKind.INVALID_REQUEST, f"{param}: {message}", param=param)


class TextBlock(msgspec.Struct, tag_field="type", tag="text"):
    text: str


class Base64Source(msgspec.Struct, tag_field="type", tag="base64"):
    media_type: str
    data: str


class UrlSource(msgspec.Struct, tag_field="type", tag="url"):
    url: str


class FileSource(msgspec.Struct, tag_field="type", tag="file"):
    file_id: str = ""


class ImageBlock(msgspec.Struct, tag_field="type", tag="image"):
    source: Base64Source | UrlSource | FileSource


class DocumentBlock(msgspec.Struct, tag_field="type", tag="document"):
    pass


class SearchResultBlock(msgspec.Struct, tag_field="type", tag="search_result"):
    pass


class ToolReferenceBlock(msgspec.Struct, tag_field="type", tag="tool_reference"):
    """A deferred tool that a client's tool search found: from now on the model is shown it."""

    tool_name: str


class ToolUseBlock(msgspec.Struct, tag_field="type", tag="tool_use"):
    id: str
    name: str
    input: dict[str, object]


class ToolResultBlock(msgspec.Struct, tag_field="type", tag="tool_result"):
    tool_use_id: str
    content: str | list[TextBlock | ImageBlock | DocumentBlock | SearchResultBlock | ToolReferenceBlock] = ""
    is_error: bool = False


class ThinkingBlock(msgspec.Struct, tag_field="type", tag="thinking"):
    thinking: str
    signature: str = ""


class RedactedThinkingBlock(msgspec.Struct, tag_field="type", tag="redacted_thinking"):
    data: str = ""


Block = TextBlock | ImageBlock | DocumentBlock | SearchResultBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock
# What no local model can be given yet, by block type: a 400 rather than a silent drop.
_UNSUPPORTED = {
    DocumentBlock: "documents are not supported",
    SearchResultBlock: "search results are not supported",
}


class Message(msgspec.Struct):
    role: str
    content: str | list[Block]


class ToolDefinition(msgspec.Struct):
    name: str
    input_schema: dict[str, object] | None = None
    description: str | None = None
    # Absent or "custom": a client tool; any other type is one of Anthropic's server or versioned tools.
    type: str | None = None
    # Anthropic's tool search: the model is not shown the tool until a tool_reference names it.
    defer_loading: bool = False


class ToolChoice(msgspec.Struct):
    type: str
    name: str | None = None
    disable_parallel_tool_use: bool = False


class Thinking(msgspec.Struct):
    type: str
    budget_tokens: int | None = None
    # "omitted": thinking blocks come without their text (the signature alone).
    display: str | None = None


class OutputFormat(msgspec.Struct):
    type: str
    schema: dict[str, object] | None = None


class OutputConfig(msgspec.Struct):
    format: OutputFormat | None = None


class CountTokensRequest(msgspec.Struct, kw_only=True):
    """POST /v1/messages/count_tokens: what shapes the prompt."""

    model: str
    messages: list[Message]
    system: str | list[TextBlock] | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
    # The structured-outputs beta's name for output_config.format.
    output_format: OutputFormat | None = None
    # Features of Anthropic's own servers that change the answer: refused when used.
    mcp_servers: list[object] | None = None
    container: object | None = None

    def validate(self, limits: RequestLimits) -> None:
        if not self.model:
            raise invalid("model", "must not be empty")
        if self.mcp_servers:
            raise invalid("mcp_servers", "MCP servers run by the API are not supported; give their tools as tools")
        if self.container is not None:
            raise invalid("container", "containers (Anthropic's code execution) are not supported")
        self._validate_messages()
        self._validate_tools()
        self._validate_thinking()
        if self.output_format is not None and self.output_config is not None and self.output_config.format is not None:
            raise invalid("output_format", "give the format once, as output_config.format")
        form = self.format()
        if form is not None and form.type != "json_schema":
            raise invalid("output_config.format.type", f"must be json_schema, not {form.type!r}")

    def format(self) -> OutputFormat | None:
        if self.output_format is not None:
            return self.output_format
        return None if self.output_config is None else self.output_config.format

    def _validate_messages(self) -> None:
        if not self.messages:
            raise invalid("messages", "must not be empty")
        for index, message in enumerate(self.messages):
            where = f"messages.{index}"
            if message.role not in _ROLES:
                raise invalid(f"{where}.role", f"must be one of {', '.join(_ROLES)}, not {message.role!r}")
            if isinstance(message.content, str):
                continue
            for number, block in enumerate(message.content):
                _check_block(block, role=message.role, where=f"{where}.content.{number}")
        if self.messages[-1].role == "assistant":
            # A chat template opens a new assistant turn after the messages; it cannot continue one.
            raise invalid(f"messages.{len(self.messages) - 1}", "continuing a final assistant message (prefill) is not supported")

    def _validate_tools(self) -> None:
        names = set()
        for index, tool in enumerate(self.tools or ()):
            if tool.type not in (None, "custom"):
                raise invalid(f"tools.{index}.type", f"{tool.type!r} is a tool that Anthropic's servers run; only client tools (custom) are supported")
            if not _TOOL_NAME.fullmatch(tool.name):
                raise invalid(f"tools.{index}.name", "a tool name is 1 to 128 of a-z, A-Z, 0-9, _ and -")
            if tool.input_schema is None:
                raise invalid(f"tools.{index}.input_schema", "a client tool needs its input_schema")
            if tool.name in names:
                # A call names its tool: two of one name would leave the call's schema and the client's handler in doubt.
                raise invalid(f"tools.{index}.name", f"tool names must be unique; {tool.name!r} is there twice")
            names.add(tool.name)
        choice = self.tool_choice
        if choice is None:
            return
        if choice.type not in ("auto", "any", "tool", "none"):
            raise invalid("tool_choice.type", f"must be auto, any, tool or none, not {choice.type!r}")
        if choice.type in ("any", "tool") and not self.tools:
            raise invalid("tool_choice", f"tool_choice {choice.type} needs tools")
        if choice.type == "tool" and choice.name not in names:
            raise invalid("tool_choice.name", f"{choice.name!r} is not among the tools")

    def _validate_thinking(self) -> None:
        thinking = self.thinking
        if thinking is None:
            return
        if thinking.type not in ("enabled", "disabled", "adaptive"):
            raise invalid("thinking.type", f"must be enabled, disabled or adaptive, not {thinking.type!r}")
        if thinking.type == "enabled" and (thinking.budget_tokens is None or thinking.budget_tokens < 1):
            raise invalid("thinking.budget_tokens", "thinking enabled needs a budget_tokens of 1 or more")
        if thinking.type == "enabled" and (self.forces_tool_call or self.format() is not None):
            # The grammar that forces a call or a format would hold from the first token, inside the thinking.
            what = "tool_choice" if self.forces_tool_call else "output_config.format"
            raise invalid("thinking", f"thinking cannot be enabled together with a forcing {what}")

    @property
    def omits_thinking(self) -> bool:
        return self.thinking is not None and self.thinking.display == "omitted"

    @property
    def forces_tool_call(self) -> bool:
        return self.tool_choice is not None and self.tool_choice.type in ("any", "tool")

    def thinking_switch(self) -> bool | None:
        """The chat template's thinking switch: on, off, or its default (adaptive: the model decides).

        Without ``thinking`` it is off, as Anthropic's default is; a grammar that
        holds from the first token (a forced call, a format) turns it off too.
        """
        if self.forces_tool_call or self.format() is not None:
            return False
        if self.thinking is None:
            return False
        return {"enabled": True, "disabled": False}.get(self.thinking.type)


def _check_image(block: object, *, role: str, where: str) -> None:
    if not isinstance(block, ImageBlock):
        return
    if role != "user":
        raise invalid(where, "images belong in user messages (or in their tool results)")
    if isinstance(block.source, FileSource):
        raise invalid(f"{where}.source", "images by file_id are not supported (no Files API here); send the image as base64 data")


def _check_block(block: object, *, role: str, where: str) -> None:
    if type(block) in _UNSUPPORTED:
        raise invalid(where, _UNSUPPORTED[type(block)])
    _check_image(block, role=role, where=where)
    if role == "assistant" and isinstance(block, ToolResultBlock):
        raise invalid(where, "tool_result blocks belong in user messages")
    if role != "assistant" and isinstance(block, ToolUseBlock | ThinkingBlock | RedactedThinkingBlock):
        raise invalid(where, f"{type(block).__name__.removesuffix('Block').lower()} blocks belong in assistant messages")
    if isinstance(block, ToolUseBlock) and not _TOOL_NAME.fullmatch(block.name):
        raise invalid(f"{where}.name", "a tool name is 1 to 128 of a-z, A-Z, 0-9, _ and -")
    if isinstance(block, ToolResultBlock) and isinstance(block.content, list):
        for number, part in enumerate(block.content):
            if type(part) in _UNSUPPORTED:
                raise invalid(f"{where}.content.{number}", _UNSUPPORTED[type(part)])
            _check_image(part, role=role, where=f"{where}.content.{number}")


class MessagesRequest(CountTokensRequest, kw_only=True):
    """POST /v1/messages."""

    max_tokens: int
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stream: bool | None = False

    def validate(self, limits: RequestLimits) -> None:
        super().validate(limits)
        # Clients send their Claude model's output limit (Claude Code: 32,000 to 128,000): it is a
        # ceiling, lowered to the server's cap here and to what the context leaves by the worker.
        if self.max_tokens < 1:
            raise invalid("max_tokens", f"must be 1 or more, not {self.max_tokens}")
        if self.temperature is not None and not 0 <= self.temperature <= 1:
            raise invalid("temperature", f"must be within [0, 1], not {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise invalid("top_p", f"must be within (0, 1], not {self.top_p}")
        if self.top_k is not None and not 0 <= self.top_k <= MAX_TOP_K:
            raise invalid("top_k", f"must be within [0 (off), {MAX_TOP_K}], not {self.top_k}")
        stops = self.stop_sequences or []
        if len(stops) > MAX_STOP_SEQUENCES:
            raise invalid("stop_sequences", f"at most {MAX_STOP_SEQUENCES} stop sequences, not {len(stops)}")
        if any(not 0 < len(stop) <= MAX_STOP_LENGTH for stop in stops):
            raise invalid("stop_sequences", f"stop sequences must have 1 to {MAX_STOP_LENGTH} characters")
