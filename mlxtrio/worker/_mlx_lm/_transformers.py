"""Transformers (which mlx-lm imports for its tokenizers) indexes its models folder once, not twice.

Transformers 5 imports lazily from an index of every model's files, which it
builds by reading each of them. ``transformers/__init__.py`` builds the index
of ``transformers/models`` from the folder's path; ``transformers/models/__init__.py``
builds it again from its own file's path, which its cache does not see as the
same key, though a file stands for its folder there and the index is the same.
The second reading is the larger part of a worker's start, so the worker hands
that call the folder's path instead: the cached index, no files read. A
transformers whose names differ is left as it is (the double reading, nothing
worse); tests/worker/test_transformers_index.py fails on one where this no
longer saves the reading, or gives another index.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["index_models_once"]


def index_models_once() -> None:
    """Have ``transformers.models`` take the index ``transformers`` built of its folder; before it is imported."""
    import transformers.utils.import_utils as import_utils

    define = getattr(import_utils, "define_import_structure", None)
    if "transformers.models" in sys.modules or not callable(define) or getattr(define, "folder_for_init", False):
        return
    # As transformers/__init__.py names the folder: the key its cache holds the index under.
    models = Path(import_utils.__file__).parent.parent / "models"

    def define_import_structure(module_path, prefix=None):  # noqa: ANN001, ANN202 - transformers' signature
        if Path(module_path) == models / "__init__.py":
            module_path = models
        return define(module_path, prefix)

    define_import_structure.folder_for_init = True
    import_utils.define_import_structure = define_import_structure
