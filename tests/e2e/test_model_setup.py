"""A model as the operator names it: refused at start if it cannot exist, failed loads explained, short names, helpful 404s."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
import trio

from mlxtrio import Config
from mlxtrio._config import ModelSettings
from mlxtrio.worker._demo import ensure_demo_model

from ..helpers import bounded, server_env, status


def _chat(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 2}


# --- a configured model that cannot exist -------------------------------------------------


@pytest.mark.parametrize("case", ["absolute", "file", "home", "relative", "bare", "alias"])
@bounded(60)
async def test_a_model_that_cannot_exist_refuses_to_start(cache_dir, tmp_path, case):
    home = tmp_path / "home"
    home.mkdir()
    missing = tmp_path / "no" / "such" / "dir"
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"")
    config_file = tmp_path / "mlxtrio.toml"
    config_file.write_text(f'[models]\ntiny = "{missing}"\n')
    args, named, why = {
        "absolute": (["--model", str(missing)], str(missing), "does not exist"),
        "file": (["--model", str(a_file)], str(a_file), "not a directory"),
        "home": (["--model", "~/no-such-model"], "~/no-such-model", "does not exist"),
        "relative": (["--model", "./no-such-model"], "./no-such-model", "does not exist"),
        # Neither a directory, an alias nor a repo id (owner/name).
        "bare": (["--model", "no-such-model"], "no-such-model", "does not exist"),
        "alias": (["--config", str(config_file)], str(missing), "models.tiny"),
    }[case]
    with trio.fail_after(30):  # a server that starts anyway never exits by itself
        result = await trio.run_process(
            [sys.executable, "-m", "mlxtrio", "serve", *args],
            env={**server_env(cache_dir, tmp_path), "HOME": str(home)},
            cwd=tmp_path,
            capture_stderr=True,
            check=False,
        )
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert "invalid setting" in stderr and named in stderr and why in stderr, stderr
    assert "Traceback" not in stderr


def test_only_local_paths_are_checked_at_start(tmp_path):
    from mlxtrio.orchestrator import ModelCatalog

    model_dir = tmp_path / "mymodel"
    model_dir.mkdir()
    for model in (str(model_dir), "demo", "someone/not-cached"):
        ModelCatalog(Config.from_environment({}, hf_hub_cache=tmp_path / "hub", model=model)).check_configured()
    aliased = Config.from_environment({}, hf_hub_cache=tmp_path / "hub", model="tiny", models=(ModelSettings(name="tiny", path=str(model_dir)),))
    ModelCatalog(aliased).check_configured()


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


# --- names: the directory's name, and 404s that say what exists --------------------------


@bounded(60)
async def test_the_directory_name_is_an_alias_of_the_configured_model(client, admin, tmp_path):
    full = str(tmp_path / "models" / "mymodel")
    short = await client.post("/v1/chat/completions", json=_chat("mymodel"))
    assert short.status_code == 200, short.text
    assert (await client.post("/v1/chat/completions", json=_chat(full))).status_code == 200
    # One model under two names: one worker, loaded once.
    workers = [entry for entry in (await status(admin))["workers"] if entry["state"] == "ready"]
    assert [(entry["model"], entry["loads"]) for entry in workers] == [(full, 1)]
    assert (await client.get("/v1/models/mymodel")).json()["id"] == full
    listed = [model["id"] for model in (await client.get("/v1/models")).json()["data"]]
    assert full in listed and "mymodel" not in listed


@bounded(60)
async def test_an_unknown_model_is_a_404_that_lists_the_served_ids(client, tmp_path, openapi):
    full = str(tmp_path / "models" / "mymodel")
    for method, path, body in (("POST", "/v1/chat/completions", _chat("nope")), ("GET", "/v1/models/nope", None)):
        response = await client.request(method, path, json=body)
        assert response.status_code == 404, response.text
        openapi.validate(response.json(), "ErrorResponse")
        message = response.json()["error"]["message"]
        assert response.json()["error"]["code"] == "model_not_found"
        assert "'nope'" in message and "'demo'" in message and repr(full) in message, message


@bounded(60)
async def test_a_repo_id_not_in_the_cache_mentions_allow_downloads(client):
    response = await client.post("/v1/chat/completions", json=_chat("someone/not-cached"))
    assert response.status_code == 404, response.text
    message = response.json()["error"]["message"]
    assert "Hugging Face cache" in message and "--allow-downloads" in message, message
