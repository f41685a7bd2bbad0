"""A config file model's embedding keys (task, pooling, normalize, matryoshka): parsed into its worker's settings, or
refused at start naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlxtrio import Config
from mlxtrio import _protocol as p
from mlxtrio._config import _read_config_file
from mlxtrio.orchestrator import ModelCatalog


def _config(tmp_path: Path, entry: str) -> Config:
    (tmp_path / "model").mkdir(exist_ok=True)
    path = tmp_path / "mlxtrio.toml"
    path.write_text(f'[models.emb]\npath = "{tmp_path / "model"}"\n{entry}\n')
    return Config.from_environment({}, hf_hub_cache=tmp_path / "hub", config_file=path, embed_batch_tokens=1024)


def test_the_keys_reach_the_worker_config(tmp_path):
    config = _config(tmp_path, 'task = "embed"\npooling = "cls"\nnormalize = false\nmatryoshka = true')
    catalog = ModelCatalog(config)
    worker = catalog.worker_config(catalog.resolve("emb"))
    assert worker.task == "embed"
    assert worker.embedding == p.EmbeddingSettings(pooling="cls", normalize=False, matryoshka=True, batch_tokens=1024, pass_seconds=6.0)


def test_without_them_the_model_and_its_files_decide_but_a_built_in_s_is_known(tmp_path):
    catalog = ModelCatalog(_config(tmp_path, ""))
    worker = catalog.worker_config(catalog.resolve("emb"))
    assert worker.task == "auto"
    assert worker.embedding == p.EmbeddingSettings(pooling=None, normalize=None, matryoshka=False, batch_tokens=1024, pass_seconds=6.0)
    # The built-ins' are known: a request of the other kind is refused without loading them.
    tasks = {model: catalog.worker_config(catalog.resolve(model)).task for model in ("demo", "demo-vision", "demo-embed", "demo-embed-decoder")}
    assert tasks == {"demo": "generate", "demo-vision": "generate", "demo-embed": "embed", "demo-embed-decoder": "embed"}


@pytest.mark.parametrize(
    ("entry", "named"),
    [
        ('task = "classify"', "task"),
        ("task = 1", "task"),
        ('pooling = "max"', "pooling"),
        ('normalize = "yes"', "normalize"),
        ("matryoshka = 1", "matryoshka"),
        # A generative model has no pooling: a key that would be ignored is a mistake to say.
        ('task = "generate"\npooling = "mean"', "pooling"),
        ('task = "generate"\nmatryoshka = true', "matryoshka"),
    ],
)
def test_wrong_values_stop_the_server_naming_file_and_key(tmp_path, entry, named):
    (tmp_path / "model").mkdir()
    path = tmp_path / "mlxtrio.toml"
    path.write_text(f'[models.emb]\npath = "{tmp_path / "model"}"\n{entry}\n')
    with pytest.raises(ValueError) as caught:
        _read_config_file(path)
    message = str(caught.value)
    assert str(path) in message and "models.emb" in message and named in message, message
    assert "unknown settings" not in message, message

