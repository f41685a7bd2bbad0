"""A worker imports transformers' models index once (worker/_mlx_lm/_transformers.py), and it is transformers' own index."""

from __future__ import annotations

import json
import subprocess
import sys

# A fresh process: the suite's own has long imported transformers. It counts the model files
# transformers reads while the worker's mlx-lm imports it, then builds the index the way
# transformers/models/__init__.py would have, for comparison.
PROBE = """
import json
from pathlib import Path

import transformers.utils.import_utils as import_utils

read = []
fetch = import_utils.fetch__all__

def counting(content):
    read.append(1)
    return fetch(content)

import_utils.fetch__all__ = counting
import mlxtrio.worker._mlx_lm
import transformers.models
from transformers import AutoTokenizer, PreTrainedTokenizerFast

during_import = len(read)
init = str(Path(transformers.models.__file__))
used = import_utils.define_import_structure(init)
own = import_utils.spread_import_structure(import_utils.create_import_structure_from_path.__wrapped__(init))
print(json.dumps({
    "during_import": during_import,
    "full_reading": len(read) - during_import,
    "same": used == own,
    "classes": len(transformers.models._class_to_module),
}))
"""


def test_transformers_models_folder_is_read_once_and_indexed_as_transformers_would():
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.splitlines()[-1])
    # Reading the folder again reads hundreds of files; what the import still reads is a few subfolders' own.
    assert found["full_reading"] > 500, found
    assert found["during_import"] < found["full_reading"] / 10, found
    assert found["same"], found
    assert found["classes"] > 1000, found
