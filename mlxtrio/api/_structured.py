"""``response_format``: a JSON schema in, the regex the worker enforces out (outlines-core compiles it).

Checked here, before any response starts, so a schema that cannot be
enforced is a 400 naming what is unsupported, never a stream that fails
midway. outlines-core ignores some keywords silently (``minimum``,
``uniqueItems``, ``not`` ...); a schema that uses them would be "enforced"
without them, so they are refused by name instead.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from outlines_core.json_schema import build_regex_from_schema

from .._errors import ServerError

__all__ = ["schema_regex"]

# Keywords outlines-core enforces, those that are annotations (nothing to
# enforce), and the ones whose values are schemas in turn.
_ENFORCED = {
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems", "maxItems",
    "minLength", "maxLength", "pattern", "format", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs",
    "definitions",
}
_ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly", "writeOnly"}
_SCHEMA_MAPS = {"properties", "$defs", "definitions"}
_SCHEMA_LISTS = {"anyOf", "oneOf", "allOf", "prefixItems"}
_SCHEMA_VALUES = {"items", "additionalProperties"}
# Without a schema: any JSON object.
JSON_OBJECT = {"type": "object"}


def _unsupported(schema: Any, path: str, found: list[str]) -> None:
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        found.append(f"{path} (not an object)")
        return
    for key, value in schema.items():
        where = f"{path}.{key}"
        if key not in _ENFORCED and key not in _ANNOTATIONS:
            found.append(where)
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            for name, child in value.items():
                _unsupported(child, f"{where}.{name}", found)
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            for index, child in enumerate(value):
                _unsupported(child, f"{where}[{index}]", found)
        elif key in _SCHEMA_VALUES and isinstance(value, dict | bool):
            _unsupported(value, where, found)
        elif key in _SCHEMA_VALUES and isinstance(value, list):  # items as a list: the older prefixItems
            for index, child in enumerate(value):
                _unsupported(child, f"{where}[{index}]", found)


@functools.lru_cache(maxsize=256)
def _compile(schema_json: str) -> str | ValueError:
    try:
        return build_regex_from_schema(schema_json)
    except BaseException as exc:  # noqa: BLE001 - a Rust panic surfaces as a BaseException
        if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
            raise
        return ValueError((str(exc).splitlines() or [type(exc).__name__])[0])


def schema_regex(schema: Any, *, param: str = "response_format") -> str:
    """The regex for ``schema``, or a 400 (naming ``param``) that says which of its parts cannot be enforced."""
    found: list[str] = []
    _unsupported(schema, "schema", found)
    if found:
        raise ServerError(400, f"{param}: these schema keywords are not supported: {', '.join(found)}", param=param)
    compiled = _compile(json.dumps(schema, sort_keys=True))
    if isinstance(compiled, ValueError):
        raise ServerError(400, f"{param}: the schema cannot be enforced: {compiled}", param=param)
    return compiled
