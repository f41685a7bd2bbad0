"""Transformers' models index: built once, kept in the cache folder, then read from it (worker/_transformers_index.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mlxtrio.worker import _transformers_index

# A worker's imports in a fresh process (the suite's own has long imported transformers): how many of
# transformers' model files it opened, and the index transformers.models imports from, as sorted lists.
PROBE = """
import builtins, json, os, sys
from pathlib import Path

opened = []
real_open = builtins.open

def counting_open(file, *args, **kwargs):
    if isinstance(file, (str, os.PathLike)) and os.sep.join(("", "transformers", "models", "")) in os.fspath(file):
        opened.append(os.fspath(file))
    return real_open(file, *args, **kwargs)

builtins.open = counting_open
from mlxtrio.worker._transformers_index import keep_transformers_index

keep_transformers_index(Path(sys.argv[1]))
import mlxtrio.worker._mlx_lm
from transformers import AutoTokenizer
builtins.open = real_open

import transformers.models
import transformers.utils.import_utils as import_utils

index = import_utils.define_import_structure(transformers.models.__file__)
print(json.dumps({
    "opened": len(opened),
    "models": os.path.dirname(transformers.models.__file__),
    "index": sorted([sorted(backends), sorted([module, sorted(names)] for module, names in modules.items())] for backends, modules in index.items()),
}))
"""


def _probe(cache_dir: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", PROBE, str(cache_dir)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def _files_one_reading_opens(models: str) -> int:
    """The files transformers reads to index its models folder once (its rules: .py files, not __init__, convert_, modular_)."""
    return sum(
        name.endswith(".py") and name != "__init__.py" and not name.startswith(("convert_", "modular_"))
        for folder, _, names in os.walk(models)
        if "__pycache__" not in folder
        for name in names
    )


def test_the_first_worker_reads_transformers_models_once_and_the_next_reads_the_kept_index(tmp_path):
    first = _probe(tmp_path)
    once = _files_one_reading_opens(first["models"])
    # Transformers alone reads the folder twice (transformers/__init__.py, then transformers/models/__init__.py).
    assert once > 500 and once <= first["opened"] < once * 1.2, (once, first["opened"])
    [kept] = (tmp_path / "transformers-index").iterdir()
    second = _probe(tmp_path)
    assert second["opened"] < once / 10, (once, second["opened"])
    # The kept index is the one built: what transformers.models imports from is the same.
    assert second["index"] == first["index"] and len(first["index"]) > 1
    assert sum(len(modules) for _, modules in first["index"]) > 1000
    assert kept.stat().st_size > 0


def _models(tmp_path: Path) -> str:
    models = tmp_path / "transformers" / "models"
    (models / "llama").mkdir(parents=True)
    return str(models)


INDEX = {"llama": {frozenset(): {"configuration_llama": {"LlamaConfig"}}, frozenset({"tokenizers"}): {"tokenization_llama": {"LlamaTokenizer"}}}}


def test_the_kept_index_is_rebuilt_when_transformers_changes_and_used_while_it_does_not(tmp_path):
    models, cache = _models(tmp_path), tmp_path / "cache"
    built: list[str] = []

    def build(path: str) -> dict:
        built.append(path)
        return INDEX

    assert _transformers_index._read_or_build(build, models, cache) == INDEX
    assert _transformers_index._read_or_build(build, models, cache) == INDEX
    assert built == [models]
    # A model folder added (an upgrade, an edit): another key, built again, then kept again.
    (Path(models) / "mistral").mkdir()
    assert _transformers_index._read_or_build(build, models, cache) == INDEX
    assert _transformers_index._read_or_build(build, models, cache) == INDEX
    assert built == [models, models]
    # A kept file that does not parse is no index: built again, and written over.
    [kept] = (cache / "transformers-index").iterdir()
    kept.write_text("{")
    assert _transformers_index._read_or_build(build, models, cache) == INDEX
    assert built == [models, models, models]
    assert json.loads(kept.read_text())["key"][2] == models


def test_an_index_the_cache_cannot_take_is_still_used(tmp_path):
    models = _models(tmp_path)
    # A cache folder that is a file: nothing can be written under it.
    (tmp_path / "cache").write_text("")
    assert _transformers_index._read_or_build(lambda path: INDEX, models, tmp_path / "cache") == INDEX
    # An index of shapes the file cannot hold: used, not kept.
    odd = {"llama": {frozenset(): ["not", "a", "set"]}}
    assert _transformers_index._read_or_build(lambda path: odd, models, tmp_path / "other") is odd
    assert not (tmp_path / "other" / "transformers-index").exists()
