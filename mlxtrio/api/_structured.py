"""``response_format`` and required tool calls: the grammar a worker is to enforce, as data.

The orchestrator never compiles a grammar: what a schema costs to compile is
the requester's to choose, and a small schema can compile to a huge automaton.
It only checks that the schema is a JSON object within
``MLX_GRAMMAR_MAX_BYTES`` and hands it on; the worker compiles it with
llguidance, off its decode loop and within ``MLX_GRAMMAR_COMPILE_TIMEOUT``,
and refuses with a 400 what it cannot enforce (``worker/_grammar.py``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec

from .. import _protocol as p
from .._errors import ErrorKind, ServerError

__all__ = ["JSON_OBJECT", "NAME", "forced_call_grammar", "json_schema_grammar", "template_tools", "tool_call_grammar"]

# Without a schema: any JSON object.
JSON_OBJECT: dict[str, Any] = {"type": "object"}
# A function's or a response format's name, as OpenAI allows it: templates write it into the prompt as it is.
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _schema_text(schema: Any, *, param: str, max_bytes: int) -> str:
    if not isinstance(schema, dict | bool):
        raise ServerError(ErrorKind.INVALID_REQUEST, f"{param}: a JSON schema is an object", param=param)
    # Linear in the body, which is bounded already.
    text = msgspec.json.encode(schema)
    if len(text) > max_bytes:
        raise ServerError(
            ErrorKind.INVALID_REQUEST,
            f"{param}: the schema is {len(text)} bytes; this server takes schemas of at most {max_bytes} "
            "bytes (MLX_GRAMMAR_MAX_BYTES)",
            param=param,
            code="grammar_too_large",
        )
    return text.decode()


def json_schema_grammar(schema: Any, *, param: str, max_bytes: int) -> p.Grammar:
    """Output that is a JSON document valid against ``schema``; a 400 naming ``param`` for a schema too large."""
    return p.Grammar("json_schema", _schema_text(schema, param=param, max_bytes=max_bytes), param)


def tool_call_grammar(call_schema: dict[str, Any], *, param: str, max_bytes: int) -> p.Grammar:
    """One call in the json_tools syntax: ``<tool_call>``, a JSON object valid against ``call_schema``, ``</tool_call>``."""
    return p.Grammar("json_tool_call", _schema_text(call_schema, param=param, max_bytes=max_bytes), param)


def template_tools(functions: Sequence[dict[str, Any]]) -> str:
    """Functions (each a ``name``, ``description`` and ``parameters``) as JSON text, as chat templates take tools."""
    return msgspec.json.encode([{"type": "function", "function": function} for function in functions]).decode()


def forced_call_grammar(functions: Sequence[tuple[str, dict[str, Any] | None]], *, param: str, max_bytes: int) -> p.Grammar:
    """One call of one of ``functions`` (each a name and its parameters' JSON schema), in the json_tools syntax."""
    schemas = [
        {
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": parameters or {"type": "object"}},
            "required": ["name", "arguments"],
        }
        for name, parameters in functions
    ]
    call = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    return tool_call_grammar(call, param=param, max_bytes=max_bytes)
