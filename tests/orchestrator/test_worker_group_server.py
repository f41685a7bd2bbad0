"""A worker group in the running server: refused before any rank starts where mlx-lm cannot run it; shown rank by rank.

The ranks are tests/orchestrator/fake_rank.py (no MLX): what is tested here is the orchestrator's side.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import trio

from mlxtrio._group_support import mlx_lm_version
from mlxtrio._status_report import report

from ..helpers import bounded, worker_entry
from .test_worker_group import fake_ranks


def _model(path: Path, **settings) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps(settings))
    return path


@pytest.fixture
def server_settings(tmp_path: Path) -> dict:
    qwen = _model(tmp_path / "qwen", model_type="qwen2")
    llama = _model(tmp_path / "llama", model_type="llama")
    vision = _model(tmp_path / "vision", model_type="qwen2_vl", vision_config={"depth": 1})
    group = 'hosts = ["127.0.0.1", "127.0.0.1"]'
    config_file = tmp_path / "groups.toml"
    config_file.write_text(
        f'[models.big]\npath = "{qwen}"\n{group}\n'
        f'[models.big-llama]\npath = "{llama}"\n{group}\n'
        f'[models.big-llama-tensor]\npath = "{llama}"\n{group}\nparallel = "tensor"\n'
        f'[models.big-vision]\npath = "{vision}"\n{group}\nparallel = "tensor"\n'
    )
    return {"config_file": config_file}


@bounded(20)
async def test_a_pair_mlx_lm_cannot_run_is_refused_before_any_rank_starts(monkeypatch, client, admin):
    fake_ranks(monkeypatch, "obey")
    version = mlx_lm_version()
    for model, reason in (
        ("big-llama", f'mlx-lm {version} cannot pipeline llama models: use parallel = "tensor"'),
        ("big-vision", "a vision model cannot be served by a worker group: serve it without hosts"),
    ):
        chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        response = await client.post("/v1/chat/completions", json=chat)
        assert response.status_code == 400
        error = response.json()["error"]
        assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "group_unsupported", "model")
        assert error["message"] == f"model {model!r}: {reason}"
        assert (await admin.post("/admin/load", json={"model": model})).status_code == 400
        assert (await worker_entry(admin, model))["loads"] == 0
    # The same files in a mode mlx-lm can run start a group.
    assert (await admin.post("/admin/load", json={"model": "big-llama-tensor"})).status_code == 200


@bounded(20)
async def test_status_and_metrics_show_each_rank_and_a_rank_s_death_restarts_the_group(monkeypatch, admin, server):
    fake_ranks(monkeypatch, "obey")
    assert (await admin.post("/admin/load", json={"model": "big"})).status_code == 200
    entry = await worker_entry(admin, "big")
    ranks = entry["ranks"]
    assert [{key: rank[key] for key in ("rank", "host", "state", "memory_bytes", "shard")} for rank in ranks] == [
        {"rank": 0, "host": "127.0.0.1", "state": "running", "memory_bytes": 1000, "shard": "layers 1-1 of 2"},
        {"rank": 1, "host": "127.0.0.1", "state": "running", "memory_bytes": 2000, "shard": "layers 0-0 of 2"},
    ]
    assert ranks[0]["pid"] == entry["pid"] and entry["memory_bytes"] == 3000
    metrics = (await admin.get("/metrics")).text
    assert 'mlxtrio_rank_memory_bytes{host="127.0.0.1",model="big",rank="1"} 2000.0' in metrics
    assert 'mlxtrio_rank_up{host="127.0.0.1",model="big",rank="0"} 1.0' in metrics
    printed = await trio.to_thread.run_sync(lambda: _report(server))
    assert f"rank 1 on 127.0.0.1, pid {ranks[1]['pid']}, running, 0.0 MiB, layers 0-0 of 2" in printed

    os.kill(ranks[1]["pid"], signal.SIGKILL)
    served = await server.state.supervisor.served_model("big")
    await served.wait_stopped()
    entry = await worker_entry(admin, "big")
    assert entry["state"] == "unloaded" and entry["ranks"] == [] and entry["restart_causes"] == {"crash": 1}
    assert entry["last_crash"] == f"rank 1 (pid {ranks[1]['pid']}, 127.0.0.1): the model worker was killed by SIGKILL"
    # The next load is a new group; an unload stops every rank.
    assert (await admin.post("/admin/load", json={"model": "big"})).status_code == 200
    again = (await worker_entry(admin, "big"))["ranks"]
    assert {rank["pid"] for rank in again}.isdisjoint(rank["pid"] for rank in ranks)
    await admin.post("/admin/unload", json={"model": "big"})
    for rank in again:
        with pytest.raises(ProcessLookupError):
            os.kill(rank["pid"], 0)


def _report(server) -> str:  # noqa: ANN001
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        report(url=server.openai_url, admin_url=server.admin_url, as_json=False)
    return printed.getvalue()
