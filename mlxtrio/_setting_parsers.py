"""How a setting's value (an environment variable's string, a TOML value, a flag's) becomes its field's type.

``_config.py`` (the server's settings) and ``_model_settings.py`` (a config file model's) both parse through
``field_parsers``: a field's metadata may name a parser of its own ("parse"), else its type's is used.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from pathlib import Path

import attrs

from .tuning import (
    WorkerAllocator,
    WorkerBlas,
    WorkerCpus,
    parse_worker_allocator,
    parse_worker_blas,
    parse_worker_cpus,
)

__all__ = ["field_parsers"]


def _flag(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _path(value: object) -> Path:
    return Path(str(value)).expanduser()


def _boolean(value: object) -> bool:
    return value if isinstance(value, bool) else _flag(str(value))


def _number(convert: Callable[[str], object]) -> Callable[[object], object]:
    def checked(value: object) -> object:
        if isinstance(value, bool):  # TOML's true is no number
            raise ValueError(f"expected a number, not {value!r}")
        return convert(str(value))

    return checked


def _text(value: object) -> str:
    # The environment gives strings; a config file's value may be anything TOML has.
    if not isinstance(value, str):
        raise TypeError(f"must be a string, not {type(value).__name__}")
    return value


def _tuning(kind: type, parse: Callable[[str], object]) -> Callable[[object], object]:
    def parsed(value: object) -> object:
        return value if isinstance(value, kind) else parse(str(value))

    return parsed


# How a value (a string, a TOML value, a flag's) becomes a setting of each type; a field's
# metadata may name a parser of its own ("parse") and its environment variable ("variable").
_PARSERS_BY_TYPE: dict[object, Callable[[object], object]] = {
    str: _text,
    int: _number(int),
    float: _number(float),
    bool: _boolean,
    Path: _path,
    WorkerCpus: _tuning(WorkerCpus, parse_worker_cpus),
    WorkerAllocator: _tuning(WorkerAllocator, parse_worker_allocator),
    WorkerBlas: _tuning(WorkerBlas, parse_worker_blas),
}


def field_parsers(cls: type, names: typing.Iterable[str]) -> dict[str, Callable[[object], object]]:
    """The parser of each of ``cls``'s fields ``names``: its own, else its type's (``X | None``: X's)."""
    hints = typing.get_type_hints(cls)
    fields = attrs.fields_dict(cls)
    parsers = {}
    for name in names:
        types = [kind for kind in typing.get_args(hints[name]) or (hints[name],) if kind is not type(None)]
        parsers[name] = fields[name].metadata.get("parse") or _PARSERS_BY_TYPE[types[0]]
    return parsers
