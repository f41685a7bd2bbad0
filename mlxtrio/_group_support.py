"""Whether the pinned mlx-lm can shard a model over a worker group, decided without importing MLX.

``mlx_lm.utils.sharded_load`` pipelines a model whose ``model.model`` has a
``pipeline`` method (``PipelineMixin``) and splits it by tensors where the
model has a ``shard`` method. The orchestrator must refuse a pair it cannot
run before it starts any rank, and must not import MLX: so this reads the
installed mlx-lm's source with ``ast``, following the model module's own
imports (a module may take its model or its layers from another), and
answers what its classes would. A model it cannot decide is left to rank 0,
which refuses it at load.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import attrs

__all__ = ["GroupSupport", "group_refusal", "mlx_lm_version", "model_module", "module_support"]


@attrs.frozen
class GroupSupport:
    """What mlx-lm's ``sharded_load`` can do with one model module; None: cannot tell from its source."""

    pipeline: bool | None
    tensor: bool | None


@attrs.frozen
class _Module:
    name: str
    classes: dict[str, ast.ClassDef]
    # A local name bound by an import (or a plain alias): (module, name), name None for a module itself.
    imports: dict[str, tuple[str, str | None]]


@functools.cache
def _mlx_lm_directory() -> Path | None:
    spec = importlib.util.find_spec("mlx_lm")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@functools.cache
def mlx_lm_version() -> str:
    try:
        return version("mlx-lm")
    except PackageNotFoundError:
        return "(not installed)"


@functools.cache
def _module(name: str) -> _Module | None:
    directory = _mlx_lm_directory()
    if directory is None or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        return None
    try:
        tree = ast.parse((directory / "models" / f"{name}.py").read_text())
    except (OSError, SyntaxError, ValueError):
        return None
    classes: dict[str, ast.ClassDef] = {}
    imports: dict[str, tuple[str, str | None]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            classes[node.name] = node
        elif isinstance(node, ast.ImportFrom) and node.level == 1:
            for alias in node.names:
                # "from . import llama" binds a module; "from .llama import Model" a name in one.
                imports[alias.asname or alias.name] = (alias.name, None) if node.module is None else (node.module, alias.name)
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Name):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    imports[target.id] = (name, node.value.id)
    return _Module(name, classes, imports)


_Class = tuple[_Module, ast.ClassDef]


def _resolve(module: _Module, expression: ast.expr, depth: int = 0) -> _Class | None:
    """The class ``expression`` names in ``module``; None for one outside mlx-lm's models (``nn.Module``)."""
    if depth > 16:
        return None
    if isinstance(expression, ast.Name):
        if expression.id in module.classes:
            return module, module.classes[expression.id]
        imported = module.imports.get(expression.id)
        if imported is None or imported[1] is None or (other := _module(imported[0])) is None:
            return None
        return _resolve(other, ast.Name(imported[1]), depth + 1)
    if isinstance(expression, ast.Attribute) and isinstance(expression.value, ast.Name):
        imported = module.imports.get(expression.value.id)
        if imported is not None and imported[1] is None and (other := _module(imported[0])) is not None:
            return _resolve(other, ast.Name(expression.attr), depth + 1)
    return None


def _bases(owner: _Class) -> list[_Class]:
    return [base for expression in owner[1].bases if (base := _resolve(owner[0], expression)) is not None]


def _defines(owner: _Class, method: str) -> bool:
    """Whether the class or one of its bases within mlx-lm defines ``method``."""
    body = owner[1].body
    if any(isinstance(node, ast.FunctionDef) and node.name == method for node in body):
        return True
    return any(_defines(base, method) for base in _bases(owner))


class _Unknown(Exception):
    """The source does not say (an attribute made by a call this reader cannot follow)."""


def _attribute_classes(owner: _Class, attribute: str, depth: int = 0) -> list[_Class]:
    """The classes an instance's ``attribute`` may be: what ``__init__`` assigns it, or a property's chain."""
    if depth > 8:
        raise _Unknown
    module, cls = owner
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == attribute:
            returned = [statement.value for statement in node.body if isinstance(statement, ast.Return)]
            chain = _self_chain(returned[0]) if len(returned) == 1 and returned[0].value is not None else None
            if chain is None:
                raise _Unknown
            found = [owner]
            for name in chain:
                found = [each for holder in found for each in _attribute_classes(holder, name, depth + 1)]
            return found
    found = []
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__init__":
            for statement in ast.walk(node):
                if isinstance(statement, ast.Assign) and any(_is_self_attribute(target, attribute) for target in statement.targets):
                    value = statement.value
                    made = _resolve(module, value.func) if isinstance(value, ast.Call) else None
                    if made is None:
                        raise _Unknown
                    found.append(made)
    if found:
        return found
    return [each for base in _bases(owner) for each in _attribute_classes(base, attribute, depth + 1)]


def _is_self_attribute(target: ast.expr, attribute: str) -> bool:
    is_self = isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self"
    return is_self and target.attr == attribute


def _self_chain(expression: ast.expr) -> list[str] | None:
    """``self.a.b`` as ["a", "b"]; None for anything else."""
    names = []
    while isinstance(expression, ast.Attribute):
        names.append(expression.attr)
        expression = expression.value
    return names[::-1] if isinstance(expression, ast.Name) and expression.id == "self" and names else None


@functools.cache
def module_support(name: str) -> GroupSupport | None:
    """What ``sharded_load`` can do with ``mlx_lm.models.<name>``'s ``Model``; None if there is no such module."""
    module = _module(name)
    model = _resolve(module, ast.Name("Model")) if module is not None else None
    if model is None:
        return None
    try:
        holders = _attribute_classes(model, "model")
        answers = {_defines(holder, "pipeline") for holder in holders}
        # No "model" attribute at all: sharded_load sees no pipeline.
        pipeline = answers.pop() if len(answers) == 1 else (False if not holders else None)
    except _Unknown:
        pipeline = None
    return GroupSupport(pipeline=pipeline, tensor=_defines(model, "shard"))


@functools.cache
def _remapping() -> tuple[dict, dict]:
    """mlx-lm's ``MODEL_REMAPPING`` and ``MODEL_ARCHITECTURE_REMAPPING``, which turn a model_type into a module."""
    directory = _mlx_lm_directory()
    found: dict[str, dict] = {"MODEL_REMAPPING": {}, "MODEL_ARCHITECTURE_REMAPPING": {}}
    if directory is not None:
        try:
            tree = ast.parse((directory / "utils.py").read_text())
        except (OSError, SyntaxError, ValueError):
            tree = ast.Module(body=[], type_ignores=[])
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                if node.targets[0].id in found:
                    try:
                        found[node.targets[0].id] = ast.literal_eval(node.value)
                    except ValueError:
                        pass
    return found["MODEL_REMAPPING"], found["MODEL_ARCHITECTURE_REMAPPING"]


def model_module(settings: dict) -> str | None:
    """The mlx-lm model module a config.json's settings load with, as ``mlx_lm.utils._get_classes`` picks it."""
    model_type = settings.get("model_type")
    if not isinstance(model_type, str):
        return None
    by_type, by_architecture = _remapping()
    architectures = settings.get("architectures") or ()
    for architecture in (architectures,) if isinstance(architectures, str) else architectures:
        if isinstance(architecture, str) and (model_type, architecture) in by_architecture:
            return by_architecture[(model_type, architecture)]
    return by_type.get(model_type, model_type)


_MODES = {"pipeline": ("pipeline", "tensor"), "tensor": ("tensor", "pipeline")}


def group_refusal(model_directory: Path, parallel: str) -> str | None:
    """Why a worker group cannot serve the model in ``model_directory`` in mode ``parallel``; None: it can, or only loading tells."""
    try:
        settings = json.loads((model_directory / "config.json").read_bytes())
    except (OSError, ValueError):
        return None  # no model directory: its load says why
    if not isinstance(settings, dict):
        return None
    if isinstance(settings.get("vision_config"), dict):
        return "a vision model cannot be served by a worker group: serve it without hosts"
    module = model_module(settings)
    support = module_support(module) if module is not None else None
    if support is None:
        return None
    version = mlx_lm_version()
    if getattr(support, parallel) is False:
        other = _MODES[parallel][1]
        hint = f': use parallel = "{other}"' if getattr(support, other) else ": it cannot be sharded at all; serve it without hosts"
        return f"mlx-lm {version} cannot {'pipeline' if parallel == 'pipeline' else 'tensor-split'} {settings['model_type']} models{hint}"
    return None
