"""A model the config file names: its entry of the ``[models]`` table, parsed and checked."""

from __future__ import annotations

import re
from pathlib import Path

import attrs

from ._group_settings import checked_group, parse_hosts, parse_rdma
from ._setting_parsers import field_parsers

__all__ = ["ModelSettings", "model_settings"]

_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")
# The built-in models' names (the catalog's), which no alias may take.
BUILT_IN_NAMES = ("demo", "demo-vision", "demo-embed", "demo-embed-decoder")
TASKS = ("auto", "generate", "embed")
POOLINGS = ("mean", "cls", "last")


def _toml_boolean(value: object) -> bool:
    # A config file's true or false, not a string that a typo would turn into false.
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {value!r}")
    return value


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
    # What the model serves: "generate", "embed", or "auto" (its worker tells from its files). An embedding model's
    # pooling ("mean", "cls", "last") and normalisation (None: its sentence-transformers files, else the worker's
    # default), and whether it was trained for shorter vectors (Matryoshka: a request may ask for ``dimensions``).
    task: str = "auto"
    pooling: str | None = None
    normalize: bool | None = attrs.field(default=None, metadata={"parse": _toml_boolean})
    matryoshka: bool = attrs.field(default=False, metadata={"parse": _toml_boolean})


def model_settings(path: Path, name: str, entry: object) -> ModelSettings:
    """One entry of the config file's [models] table."""
    if not _MODEL_ID.fullmatch(name) or name in BUILT_IN_NAMES:
        raise ValueError(f"{path}: {name!r} cannot name a model")
    if isinstance(entry, str):
        entry = {"path": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        raise ValueError(f"{path}: models.{name} needs a path (a directory or a Hugging Face repo id)")
    unknown = sorted(set(entry) - set(_MODEL_PARSERS))
    if unknown:
        raise ValueError(f"{path}: models.{name}: unknown settings {', '.join(unknown)}")
    values = {}
    for key, value in entry.items():
        try:
            values[key] = _MODEL_PARSERS[key](value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: models.{name}: {key} = {value!r}: {exc}") from None
    model = ModelSettings(name=name, **values)
    if model.decode_concurrency is not None and model.decode_concurrency < 1:
        raise ValueError(f"{path}: models.{name}: decode_concurrency must be at least 1")
    _check_embedding(model, where=f"{path}: models.{name}")
    return checked_group(model, where=f"{path}: models.{name}")


def _check_embedding(model: ModelSettings, *, where: str) -> None:
    if model.task not in TASKS:
        raise ValueError(f'{where}: task = {model.task!r}: must be "auto", "generate" or "embed"')
    if model.pooling is not None and model.pooling not in POOLINGS:
        raise ValueError(f'{where}: pooling = {model.pooling!r}: must be "mean", "cls" or "last"')
    if model.task == "generate":
        given = [name for name in ("pooling", "normalize") if getattr(model, name) is not None] + ["matryoshka"] * model.matryoshka
        if given:
            raise ValueError(f'{where}: {", ".join(given)} with task = "generate": only an embedding model has them')


_MODEL_PARSERS = field_parsers(ModelSettings, [field.name for field in attrs.fields(ModelSettings) if field.name != "name"])
