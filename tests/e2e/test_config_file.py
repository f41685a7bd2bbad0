"""The TOML config file: settings under flags and environment, model aliases with settings of their own."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import trio

from mlxtrio import Config
from mlxtrio.worker._demo import ensure_demo_model

from ..helpers import bounded, status, worker_entry


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_file_then_environment_then_flags(tmp_path):
    config_file = _write(
        tmp_path / "mlxtrio.toml",
        'port = 1234\nidle_timeout = 50\ndecode_concurrency = 4\nmodel = "tiny"\nallow_downloads = true\n'
        '[models]\ntiny = "/models/tiny"\n',
    )
    config = Config.from_environment(env={"MLX_CONFIG": str(config_file), "MLX_PORT": "2222"}, idle_timeout=7.0)
    assert (config.port, config.idle_timeout, config.decode_concurrency, config.model) == (2222, 7.0, 4, "tiny")
    assert config.allow_downloads is True and config.config_file == config_file
    assert config.model_settings("tiny").path == "/models/tiny"
    # The flag names the file too, over MLX_CONFIG.
    other = _write(tmp_path / "other.toml", "port = 4321\n")
    assert Config.from_environment(env={"MLX_CONFIG": str(config_file)}, config_file=other).port == 4321
    assert Config.from_environment(env={"MLX_CONFIG": str(config_file)}).describe()["models"]["tiny"]["path"] == "/models/tiny"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 'blue'\n", "unknown settings colour"),
        ("port = 'abc'\n", "port = 'abc'"),
        ("port = true\n", "port = True"),
        ("api_keys = ['k']\n", "MLX_API_KEY_FILE"),
        ("[models]\ndemo = '/x'\n", "'demo' cannot name a model"),
        ("[models]\ndemo-vision = '/x'\n", "'demo-vision' cannot name a model"),
        ("[models]\ndemo-embed = '/x'\n", "'demo-embed' cannot name a model"),
        ("[models]\ndemo-embed-decoder = '/x'\n", "'demo-embed-decoder' cannot name a model"),
        ("[models]\n'../x' = '/x'\n", "cannot name a model"),
        ("[models.tiny]\nidle_timeout = 3\n", "needs a path"),
        ("[models.tiny]\npath = '/x'\ncolour = 1\n", "models.tiny: unknown settings colour"),
        ("[models.tiny]\npath = '/x'\ndecode_concurrency = 0\n", "at least 1"),
        ("[models.tiny]\npath = '/x'\nchat_template = 5\n", "models.tiny: chat_template = 5: must be a string, not int"),
        ("host = 127\n", "host = 127: must be a string, not int"),
        ("port = \n", "not valid TOML"),
    ],
)
def test_a_wrong_file_says_what_and_where(tmp_path, text, message):
    config_file = _write(tmp_path / "bad.toml", text)
    with pytest.raises(ValueError, match="bad.toml") as raised:
        Config.from_environment(env={}, config_file=config_file)
    assert message in str(raised.value)


@bounded(60)
async def test_the_cli_refuses_a_wrong_file(tmp_path):
    bad = _write(tmp_path / "bad.toml", "colour = 'blue'\n")
    missing = tmp_path / "missing.toml"
    for config_file in (bad, missing):
        result = await trio.run_process(
            [sys.executable, "-m", "mlxtrio", "serve", "--config", str(config_file)],
            env={**os.environ, "MLX_CACHE_DIR": str(tmp_path)},
            capture_stderr=True,
            check=False,
        )
        assert result.returncode == 2 and b"invalid setting" in result.stderr and str(config_file).encode() in result.stderr
        assert b"Traceback" not in result.stderr


@pytest.fixture
def server_settings(cache_dir: Path, tmp_path: Path) -> dict:
    model_dir = tmp_path / "tiny-model"
    shutil.copytree(ensure_demo_model(cache_dir), model_dir)
    config_file = _write(
        tmp_path / "mlxtrio.toml",
        f"""
model = "tiny"

[models]
tiny = "{model_dir}"

[models.plain]
path = "{model_dir}"
chat_template = "{{{{ messages[-1]['content'] }}}}"
decode_concurrency = 1
idle_timeout = 0.5
""",
    )
    return {"config_file": config_file, "max_loaded_models": 3}


def _chat(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 2}


@bounded(90)
async def test_aliases_serve_with_their_own_settings(client, admin, server):
    listed = {model["id"] for model in (await client.get("/v1/models")).json()["data"]}
    assert {"demo", "tiny", "plain"} <= listed
    # The default model is the alias the file names.
    assert (await admin.post("/admin/load")).json()["model"] == "tiny"
    tiny = (await client.post("/v1/chat/completions", json=_chat("tiny"))).json()
    plain = (await client.post("/v1/chat/completions", json=_chat("plain"))).json()
    bare = (await client.post("/v1/completions", json={"model": "tiny", "prompt": "hello there", "max_tokens": 2})).json()
    # plain's template is the message alone: no role markers around it.
    assert plain["usage"]["prompt_tokens"] <= bare["usage"]["prompt_tokens"] < tiny["usage"]["prompt_tokens"]
    assert (await worker_entry(admin, "plain"))["engine"] == "sequential"  # decode_concurrency = 1
    assert (await worker_entry(admin, "tiny"))["engine"] == "batched"
    # plain's idle timeout is its own.
    with trio.fail_after(10):
        await (await server.state.supervisor.served_model("plain")).wait_stopped()
    assert (await worker_entry(admin, "tiny"))["state"] == "ready"
    assert "plain" in (await status(admin))["config"]["models"]
