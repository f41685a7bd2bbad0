"""Input items: checked and written out as the items a stored response lists, and a conversation's items as chat messages.

A request's input is normalised once into item objects as OpenAI lists them
(``GET /v1/responses/{id}/input_items``), each with an id; a response's
output items have the same shapes. A conversation is such items, the
history of earlier turns first, and becomes the chat template's messages:
a reasoning item's text goes to the assistant turn it precedes, and an
assistant's text and its function calls make one assistant turn.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from ... import _protocol as p
from ..._errors import ErrorKind, ServerError
from .._images import ImageSource, ImageSources, check_detail, parts_message
from .._structured import NAME
from ._schemas import InputItem, Part

__all__ = ["chat_messages", "input_items", "item_id"]

_MESSAGE_ROLES = {"user", "assistant", "system", "developer"}
_TEXT_PARTS = {"input_text", "output_text", "text"}
_ID_PREFIXES = {"message": "msg_", "function_call": "fc_", "function_call_output": "fco_", "reasoning": "rs_"}


def item_id(kind: str) -> str:
    return _ID_PREFIXES.get(kind, "item_") + secrets.token_hex(24)


def _invalid(message: str, param: str) -> ServerError:
    return ServerError(ErrorKind.INVALID_REQUEST, message, param=param)


def _part_text(part: Part, param: str) -> str:
    if part.type in _TEXT_PARTS and part.text is not None:
        return part.text
    if part.type == "refusal" and part.refusal is not None:
        return part.refusal
    if part.type == "input_image":
        raise _invalid(f"{param}: images are taken in user messages only", param)
    if part.type == "input_file":
        raise _invalid(f"{param}: files are not supported", param)
    raise _invalid(f"{param}: a content part is input_text or output_text with its text, not {part.type!r}", param)


def _texts(content: str | list[Part] | None, param: str) -> list[str]:
    if content is None:
        raise _invalid(f"{param} is required", param)
    if isinstance(content, str):
        return [content]
    if not content:
        raise _invalid(f"{param} must not be an empty list", param)
    return [_part_text(part, f"{param}[{index}]") for index, part in enumerate(content)]


def _image(part: Part, param: str) -> dict:
    """An input_image part as it is stored and listed: its URL kept as sent (a data: URL with the image), so that
    a conversation continued from it gives the model the image again."""
    if part.file_id is not None:
        raise _invalid(f"{param}: images by file_id are not supported (no Files API here); send a data: URL as image_url", f"{param}.file_id")
    if part.image_url is None:
        raise _invalid(f"{param}: an input_image needs its image_url", f"{param}.image_url")
    # "original": the image as large as the server takes any (MLX_IMAGE_MAX_PIXELS).
    if part.detail != "original":
        check_detail(part.detail, f"{param}.detail")
    return {"type": "input_image", "image_url": part.image_url, "file_id": None, "detail": part.detail or "auto"}


def _user_parts(content: str | list[Part] | None, param: str) -> list[dict]:
    if not isinstance(content, list) or not content:
        return [_input_text(text) for text in _texts(content, param)]
    return [
        _image(part, f"{param}[{index}]") if part.type == "input_image" else _input_text(_part_text(part, f"{param}[{index}]"))
        for index, part in enumerate(content)
    ]


def _input_text(text: str) -> dict:
    return {"type": "input_text", "text": text}


def _message(item: InputItem, param: str) -> dict:
    if item.role not in _MESSAGE_ROLES:
        raise _invalid(f"{param}.role is one of {sorted(_MESSAGE_ROLES)}, not {item.role!r}", f"{param}.role")
    if item.role == "user":
        parts = _user_parts(item.content, f"{param}.content")
    elif item.role == "assistant":
        parts = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []} for text in _texts(item.content, f"{param}.content")]
    else:
        parts = [_input_text(text) for text in _texts(item.content, f"{param}.content")]
    return {"type": "message", "role": item.role, "content": parts, "status": "completed"}


def _function_call(item: InputItem, param: str) -> dict:
    if item.call_id is None:
        raise _invalid(f"{param}.call_id is required", f"{param}.call_id")
    if item.name is None or not NAME.fullmatch(item.name):
        raise _invalid("a function name is 1 to 64 of a-z, A-Z, 0-9, _ and -", f"{param}.name")
    if item.arguments is None:
        raise _invalid(f"{param}.arguments is required", f"{param}.arguments")
    return {"type": "function_call", "call_id": item.call_id, "name": item.name, "arguments": item.arguments, "status": "completed"}


def _function_call_output(item: InputItem, param: str) -> dict:
    if item.call_id is None:
        raise _invalid(f"{param}.call_id is required", f"{param}.call_id")
    output = "".join(_texts(item.output, f"{param}.output"))
    return {"type": "function_call_output", "call_id": item.call_id, "output": output, "status": "completed"}


def _reasoning_parts(parts: list[Part], kind: str, param: str) -> list[dict]:
    for index, part in enumerate(parts):
        if part.type != kind or part.text is None:
            raise _invalid(f"{param}[{index}]: a {kind} part with its text, not {part.type!r}", f"{param}[{index}]")
    return [{"type": kind, "text": part.text} for part in parts]


def _reasoning(item: InputItem, param: str) -> dict:
    if isinstance(item.content, str):
        raise _invalid(f"{param}.content: a list of reasoning_text parts", f"{param}.content")
    reasoning: dict = {
        "type": "reasoning",
        "summary": _reasoning_parts(item.summary or [], "summary_text", f"{param}.summary"),
        "content": _reasoning_parts(item.content or [], "reasoning_text", f"{param}.content"),
    }
    if item.encrypted_content is not None:
        reasoning["encrypted_content"] = item.encrypted_content
    return reasoning


def _normalised(item: InputItem, param: str) -> dict:
    kind = item.type
    if kind == "message":
        return _message(item, param)
    if kind == "function_call":
        return _function_call(item, param)
    if kind == "function_call_output":
        return _function_call_output(item, param)
    if kind == "reasoning":
        return _reasoning(item, param)
    if kind in (None, "item_reference"):
        raise _invalid(f"{param}: item references are not supported; send the items themselves, or previous_response_id", f"{param}.type")
    raise _invalid(
        f"{param}: items of type {kind!r} are not supported (messages, function_call, function_call_output and reasoning are)", f"{param}.type"
    )


def input_items(given: str | list[InputItem] | None) -> list[dict]:
    """The request's input as item objects, each with an id: the given one where it is unique, else a fresh one."""
    if given is None:
        return []
    if isinstance(given, str):
        return [{"id": item_id("message"), "type": "message", "role": "user", "content": [{"type": "input_text", "text": given}], "status": "completed"}]
    items, seen = [], set()
    for index, item in enumerate(given):
        normalised = _normalised(item, f"input[{index}]")
        unique = item.id is not None and 0 < len(item.id) <= 256 and item.id not in seen
        normalised = {"id": item.id if unique else item_id(normalised["type"]), **normalised}
        seen.add(normalised["id"])
        items.append(normalised)
    return items


def _text(parts: Sequence[dict]) -> str:
    return "".join(part.get("text", "") for part in parts)


def _system_first(instructions: str | None, items: Sequence[dict]) -> tuple[list[p.ChatMessage], Sequence[dict]]:
    """The instructions and the system or developer messages that open the conversation, as one system message.

    Chat templates know a system role, often only as the first message, and
    many drop a developer one; Codex CLI sends its system prompt as developer
    messages, two of them.
    """
    texts = [instructions] if instructions else []
    start = 0
    while start < len(items) and items[start]["type"] == "message" and items[start]["role"] in ("system", "developer"):
        texts.append(_text(items[start]["content"]))
        start += 1
    return ([p.ChatMessage("system", "\n\n".join(texts))] if texts else []), items[start:]


def _user_message(item: dict, where: str | None, sources: ImageSources) -> p.ChatMessage:
    """A user message; its images named by ``where``'s parts (None: an earlier turn's, named by previous_response_id)."""
    parts = []
    for number, part in enumerate(item["content"]):
        if part["type"] == "input_image":
            detail = "high" if part["detail"] == "original" else part["detail"]
            named = "previous_response_id" if where is None else f"{where}.content[{number}]"
            parts.append(sources.part(ImageSource(where=named, url=part["image_url"], detail=detail)))
        else:
            parts.append(p.ContentPart(text=part.get("text", "")))
    return parts_message("user", parts, joiner="")


def chat_messages(instructions: str | None, items: Sequence[dict], *, sources: ImageSources, earlier: int = 0) -> tuple[p.ChatMessage, ...]:
    """A conversation's items (the ``earlier`` turns' first) as the chat template's messages: one system message first
    (``instructions`` and the opening system or developer messages), and a developer message later as a system one;
    the user messages' images gathered in ``sources``, named by this request's input or else by previous_response_id."""
    opening = len(items)
    messages, items = _system_first(instructions, items)
    opening -= len(items)
    reasoning = ""
    # The assistant turn that function calls join: text and calls of one turn are one message.
    turn: p.ChatMessage | None = None
    for position, item in enumerate(items, opening):
        kind = item["type"]
        if kind == "reasoning":
            reasoning += _text(item["content"]) or _text(item["summary"])
            continue
        if kind == "message" and item["role"] == "assistant":
            turn = p.ChatMessage("assistant", _text(item["content"]), reasoning=reasoning)
            messages.append(turn)
            reasoning = ""
        elif kind == "function_call":
            call = p.ToolCall(item["name"], item["arguments"], item["call_id"])
            if turn is None or reasoning:
                turn = p.ChatMessage("assistant", "", (call,), reasoning=reasoning)
                messages.append(turn)
                reasoning = ""
            else:
                turn = p.ChatMessage("assistant", turn.content, (*turn.tool_calls, call), reasoning=turn.reasoning)
                messages[-1] = turn
        else:
            turn = None
            reasoning = ""
            if kind == "message" and item["role"] == "user":
                messages.append(_user_message(item, f"input[{position - earlier}]" if position >= earlier else None, sources))
            elif kind == "message":
                messages.append(p.ChatMessage("system" if item["role"] == "developer" else item["role"], _text(item["content"])))
            else:
                messages.append(p.ChatMessage("tool", item["output"], tool_call_id=item["call_id"]))
    return tuple(messages)
