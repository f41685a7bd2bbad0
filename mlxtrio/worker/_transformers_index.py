"""Transformers' index of its models: built once, kept in the cache folder, read by every worker after.

Transformers 5 imports lazily from an index of every model's files, which it
builds on import by reading all of them (``create_import_structure_from_path``
in ``transformers/utils/import_utils.py``), and builds a second time for
``transformers/models/__init__.py``, whose own path its cache does not see as
the folder's. mlx-lm imports transformers for its tokenizers, so that reading
was most of a worker's start. Hooked as that module is imported (before
``transformers/__init__.py`` calls it), the function gives the models folder's
index, asked by the folder's path or by its ``__init__.py``'s, from the copy kept
in the cache folder for this transformers: its version, its folder, and the
times of its model folders (a file added or removed changes one; a file edited
in place, in a transformers checkout being worked on, does not). A worker that
finds no such copy builds the index as transformers does and writes it there.
A transformers without that function is left as it is;
tests/worker/test_transformers_index.py fails where the copy is not used, or is
not the index transformers builds.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import json
import os
import sys
from pathlib import Path

__all__ = ["keep_transformers_index"]

_MODULE = "transformers.utils.import_utils"
_FUNCTION = "create_import_structure_from_path"
# Changes when the file's layout does: an older copy is then rebuilt.
_FORMAT = 1


def keep_transformers_index(cache_dir: Path) -> None:
    """Before transformers is imported: its models index is read from ``cache_dir``, or built once and written there."""
    if _MODULE in sys.modules or any(isinstance(finder, _Finder) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder(cache_dir))


class _Finder(importlib.abc.MetaPathFinder):
    """Finds transformers' import_utils as Python would, to hook it once it has run."""

    def __init__(self, cache_dir: Path) -> None:
        self._cache_dir = cache_dir

    def find_spec(self, name, path, target=None):  # noqa: ANN001, ANN201, ARG002 - importlib's signature
        if name != _MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run, cache_dir = spec.loader.exec_module, self._cache_dir

        def run_and_hook(module) -> None:  # noqa: ANN001
            run(module)
            _hook(module, cache_dir)

        spec.loader.exec_module = run_and_hook
        return spec


def _hook(module, cache_dir: Path) -> None:  # noqa: ANN001
    build = getattr(module, _FUNCTION, None)
    if not callable(build):
        return
    models = os.path.join(os.path.dirname(os.path.dirname(module.__file__)), "models")
    kept: list[dict] = []

    def create_import_structure_from_path(module_path):  # noqa: ANN001, ANN202 - transformers' signature
        # As transformers reads it: a file stands for its folder.
        folder = os.path.dirname(module_path) if os.path.isfile(module_path) else os.fspath(module_path)
        if folder != models:
            return build(module_path)
        if not kept:
            kept.append(_read_or_build(build, models, cache_dir))
        return kept[0]

    setattr(module, _FUNCTION, create_import_structure_from_path)


def _read_or_build(build, models: str, cache_dir: Path) -> dict:  # noqa: ANN001
    transformers = sys.modules.get("transformers")
    key = [_FORMAT, getattr(transformers, "__version__", None), models, _folder_times(models)]
    path = Path(cache_dir) / "transformers-index" / f"{hashlib.sha256(models.encode()).hexdigest()[:16]}.json"
    try:
        kept = json.loads(path.read_bytes())
        if kept["key"] == key:
            return _decode(kept["index"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # none yet, another transformers', or unreadable: built afresh
    index = build(models)
    try:
        text = json.dumps({"key": key, "index": _encode(index)})
        path.parent.mkdir(parents=True, exist_ok=True)
        # Whole or not at all, whichever worker writes last.
        partial = path.with_name(f"{path.name}.{os.getpid()}")
        partial.write_text(text)
        os.replace(partial, path)
    except (OSError, TypeError):
        pass  # a read-only cache folder, or an index of other shapes: each worker builds it
    return index


def _folder_times(models: str) -> list:
    """The modification times of the models folder and of each model's folder: a file added or removed moves one."""
    times = [["", os.stat(models).st_mtime_ns]]
    with os.scandir(models) as entries:
        times += sorted([entry.name, entry.stat().st_mtime_ns] for entry in entries if entry.is_dir() and entry.name != "__pycache__")
    return times


def _encode(node: dict) -> list:
    """Transformers' index as JSON: a dict as pairs, a frozenset key (its backends) as a list, a set of names as {"names"}."""
    pairs = []
    for key, value in node.items():
        if not isinstance(key, (str, frozenset)):
            raise TypeError(f"an index key of type {type(key).__name__}")
        if isinstance(value, dict):
            value = _encode(value)
        elif isinstance(value, (set, frozenset)) and all(isinstance(name, str) for name in value):
            value = {"names": sorted(value)}
        else:
            raise TypeError(f"an index value of type {type(value).__name__}")
        pairs.append([sorted(key) if isinstance(key, frozenset) else key, value])
    return pairs


def _decode(pairs: list) -> dict:
    return {
        frozenset(key) if isinstance(key, list) else key: set(value["names"]) if isinstance(value, dict) else _decode(value)
        for key, value in pairs
    }
