"""A model as the operator names it: failed loads explained."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from mlxtrio._config import ModelSettings
from mlxtrio.worker._demo import ensure_demo_model

from ..helpers import bounded


def _chat(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 2}


# --- a failed load: the reason, to the client and in the log -------------------------------


# Directories that are no loadable model (each named as its alias), and the sentence each one's failure must say.
SENTENCES = {
    "empty": "not an MLX model directory: no config.json",
    "no-weights": "no weights: no model*.safetensors file",
    "garbage": "unreadable config.json: not valid JSON",
    "alien": "unsupported architecture: model_type 'no_such_architecture'",
}


def _not_models(tmp_path: Path, demo: Path) -> list[Path]:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("my notes\n")
    no_weights = tmp_path / "no-weights"
    shutil.copytree(demo, no_weights)
    for weights in no_weights.glob("*.safetensors"):
        weights.unlink()
    garbage = tmp_path / "garbage"
    shutil.copytree(demo, garbage)
    (garbage / "config.json").write_text("{this is not json")
    alien = tmp_path / "alien"
    shutil.copytree(demo, alien)
    config = json.loads((alien / "config.json").read_text())
    (alien / "config.json").write_text(json.dumps({**config, "model_type": "no_such_architecture"}))
    return [empty, no_weights, garbage, alien]


@pytest.fixture
def server_settings(cache_dir: Path, tmp_path: Path) -> dict:
    demo = ensure_demo_model(cache_dir)
    models = [ModelSettings(name=path.name, path=str(path)) for path in _not_models(tmp_path, demo)]
    mymodel = tmp_path / "models" / "mymodel"
    shutil.copytree(demo, mymodel)
    return {"model": str(mymodel), "models": tuple(models)}


@pytest.mark.parametrize("name", list(SENTENCES))
@bounded(60)
async def test_a_failed_load_says_why_to_the_client_and_in_the_log(client, tmp_path, caplog, openapi, name):
    path, sentence = (tmp_path / name).resolve(), SENTENCES[name]
    caplog.clear()  # the start-up's warnings: this test is about the load's own line
    response = await client.post("/v1/chat/completions", json=_chat(name))
    assert response.status_code == 503, response.text
    openapi.validate(response.json(), "ErrorResponse")
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("service_unavailable", "load_failed")
    assert sentence in error["message"] and "Errno" not in error["message"], error["message"]
    assert int(response.headers["Retry-After"]) >= 1
    logged = [record for record in caplog.records if record.levelno >= logging.WARNING and sentence in record.getMessage()]
    assert logged, [record.getMessage() for record in caplog.records]
    assert repr(name) in logged[0].getMessage() and str(path) in logged[0].getMessage()
    # Asked again during the back-off: the same reason, when to try again, and no new worker.
    again = await client.post("/v1/chat/completions", json=_chat(name))
    assert again.status_code == 503 and sentence in again.json()["error"]["message"]
    assert "Retry-After" in again.headers
