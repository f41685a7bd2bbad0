"""A model the config file names: its entry of the ``[models]`` table, parsed and checked."""

from __future__ import annotations

import re
from pathlib import Path

import attrs

from ._group_settings import checked_group, parse_hosts, parse_rdma
from ._setting_parsers import field_parsers

__all__ = ["ModelSettings", "model_settings"]

_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")


@attrs.frozen(kw_only=True)
class ModelSettings:
    """A model the config file names: ``alias = "path or repo id"``, or a table with per-model settings."""

    name: str
    path: str
    idle_timeout: float | None = None
    decode_concurrency: int | None = None
    # A Jinja chat template to use instead of the tokenizer's.
    chat_template: str | None = None
    # A worker group (_group_settings.py): its ranks' hosts, rank 0's first; its split, backend and remote interpreter.
    hosts: tuple[str, ...] = attrs.field(default=(), metadata={"parse": parse_hosts})
    parallel: str | None = None
    backend: str | None = None
    python: str | None = None
    rdma: tuple[tuple[str | tuple[str, ...] | None, ...], ...] = attrs.field(default=(), metadata={"parse": parse_rdma})


def model_settings(path: Path, name: str, entry: object) -> ModelSettings:
    """One entry of the config file's [models] table."""
    if not _MODEL_ID.fullmatch(name) or name in ("demo", "demo-vision"):
        raise ValueError(f"{path}: {name!r} cannot name a model")
    if isinstance(entry, str):
        entry = {"path": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        raise ValueError(f"{path}: models.{name} needs a path (a directory or a Hugging Face repo id)")
    unknown = sorted(set(entry) - set(_MODEL_PARSERS))
    if unknown:
        raise ValueError(f"{path}: models.{name}: unknown settings {', '.join(unknown)}")
    try:
        model = ModelSettings(name=name, **{key: _MODEL_PARSERS[key](value) for key, value in entry.items()})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: models.{name}: {exc}") from None
    if model.decode_concurrency is not None and model.decode_concurrency < 1:
        raise ValueError(f"{path}: models.{name}: decode_concurrency must be at least 1")
    return checked_group(model, where=f"{path}: models.{name}")


_MODEL_PARSERS = field_parsers(ModelSettings, [field.name for field in attrs.fields(ModelSettings) if field.name != "name"])
