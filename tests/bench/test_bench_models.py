"""``python -m bench.bench_models NAME DEST`` builds into DEST, as its docstring says, the demo model included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlxtrio.worker._demo import DEMO_VERSION, build_demo_model

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_is_built_into_dest(tmp_path: Path):
    dest = tmp_path / "built" / "my-demo"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-m", "bench.bench_models", "demo", str(dest)],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(dest)
    config = json.loads((dest / "config.json").read_text())
    assert config["mlxtrio_demo"] == DEMO_VERSION
    assert {path.name for path in dest.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    # Nothing beside it: no cache layout (models/demo-vN) next to DEST.
    assert [path.name for path in dest.parent.iterdir()] == ["my-demo"]
    # Built once: a second call keeps it.
    before = (dest / "model.safetensors").stat().st_mtime_ns
    assert build_demo_model(dest) == dest
    assert (dest / "model.safetensors").stat().st_mtime_ns == before


def test_another_versions_demo_in_dest_is_rebuilt_and_anything_else_is_left_alone(tmp_path: Path):
    old = tmp_path / "old-demo"
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"mlxtrio_demo": True, "model_type": "llama"}))
    (old / "stale.bin").write_bytes(b"x")
    assert build_demo_model(old) == old
    assert json.loads((old / "config.json").read_text())["mlxtrio_demo"] == DEMO_VERSION
    assert not (old / "stale.bin").exists()

    other = tmp_path / "someone-elses-model"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(OSError):
        build_demo_model(other)
    assert json.loads((other / "config.json").read_text()) == {"model_type": "qwen2"}
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".demo-")] == []
