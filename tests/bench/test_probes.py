"""What two probes' figures rest on: the worker loop's per-part account, and the compiled decode's tokens."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from serve_variant import loop_summary  # noqa: E402


def test_the_loop_account_is_per_step_in_microseconds(tmp_path):
    lines = tmp_path / "loop.jsonl"
    record = {
        "variant": {"VARIANT_LOOP_TIMES": str(lines), "VARIANT_FRAME_HOLD": "32"},
        "parts": {
            "step": {"cpu_ns": 4_000_000, "wall_ns": 5_000_000, "calls": 1000},
            "send": {"cpu_ns": 30_000_000, "wall_ns": 31_000_000, "calls": 1000},
            "idle wait": {"cpu_ns": 5_000, "wall_ns": 9_000_000, "calls": 3},
        },
    }
    idle = {"variant": {}, "parts": {"idle wait": {"cpu_ns": 1, "wall_ns": 1, "calls": 1}}}
    lines.write_text("\n".join(json.dumps(one) for one in (record, idle, {**record, "variant": {}})) + "\n")
    first, second = loop_summary(lines)
    # A worker that never stepped is left out; the file's own name is not a
    # variant; every part is divided by the steps, not by its own calls.
    assert first["variant"] == {"VARIANT_FRAME_HOLD": "32"} and second["variant"] == {}
    assert first["steps"] == 1000
    assert first["us_per_step"]["step"] == {"cpu": 4.0, "wall": 5.0}
    assert first["us_per_step"]["send"] == {"cpu": 30.0, "wall": 31.0}
    assert first["us_per_step"]["idle wait"] == {"cpu": 0.0, "wall": 9.0}


def test_the_compiled_static_cache_decodes_what_mlx_lm_decodes(tmp_path):
    import mlx_lm
    from decode_probe import compiled_tokens

    from mlxtrio.worker._demo import ensure_demo_model

    path = ensure_demo_model(tmp_path)
    model, tokenizer = mlx_lm.load(str(path))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "a prompt"}], add_generation_prompt=True)
    # Past the first capacity of 256, so the mask and the offset are tested where they matter.
    tokens = 300 - len(prompt)
    compiled, rate = compiled_tokens(model, prompt, tokens)
    reference = [response.token for response in mlx_lm.stream_generate(model, tokenizer, prompt, max_tokens=tokens)]
    assert compiled == reference
    assert rate > 0
