"""The embedding worker's parts in-process: passes, what a model's files say, and vectors against the libraries' own forward passes."""

from __future__ import annotations

from collections import deque

import json
import shutil
from pathlib import Path

import msgspec
import numpy as np
import pytest

from mlxtrio import _protocol as p
from mlxtrio.worker._demo import ensure_demo_model
from mlxtrio.worker._embed import ensure_demo_embed_model, is_embedding_model, load_embedder
from mlxtrio.worker._embed._files import embedding_plan
from mlxtrio.worker._embed._passes import Item, PassSize, next_pass, plan
from mlxtrio.worker._model_source import LoadError

from .embed_worker import worker_config

TEXTS = ("A server is a promise to many people at once.", "hello", "the orchestrator notices")


def _item(request_id: int, index: int, length: int) -> Item:
    return Item(request_id, index, [7] * length)


def _passes(items: list[Item], batch_tokens: int) -> list[list[Item]]:
    planned, passes = plan(items), []
    while planned:
        passes.append(next_pass(planned, batch_tokens))
    return passes


def test_passes_hold_at_most_batch_tokens_padding_included_and_mix_requests():
    items = [_item(1, 0, 10), _item(2, 0, 3), _item(1, 1, 4), _item(3, 0, 40), _item(2, 1, 9), _item(2, 2, 3)]
    passes = _passes(items, 16)
    # Shortest first; each pass padded to its longest fits; one input over 16 alone.
    assert [[(item.request_id, len(item.ids)) for item in each] for each in passes] == [
        [(2, 3), (2, 3), (1, 4)],
        [(2, 9)],
        [(1, 10)],
        [(3, 40)],
    ]
    assert all(len(each) * max(len(item.ids) for item in each) <= 16 for each in passes if len(each) > 1)
    assert _passes([], 16) == []


@pytest.fixture(scope="module")
def demo_embed(cache_dir: Path) -> Path:
    return ensure_demo_embed_model(cache_dir)


def _embedder(cache_dir: Path, path: Path, **embedding: object):  # noqa: ANN202
    return load_embedder(worker_config(cache_dir, "demo-embed", **embedding), path)



def test_a_pass_holds_what_the_model_ran_in_its_seconds_within_the_limit():
    size = PassSize(limit=8192, seconds=5.0)
    # Nothing known of a fresh model: a small first pass.
    assert size.tokens == 256
    size.measured(256, 0.01)
    assert size.tokens == 8192
    size.measured(8192, 40.0)
    assert size.tokens == 1024
    size.measured(1024, 100.0)
    assert size.tokens == 51
    # However slow, a pass holds an input.
    size.measured(10, 1000.0)
    assert size.tokens == 1
    size.measured(1, 0.0)
    assert size.tokens == 8192
    assert PassSize(limit=16, seconds=5.0).tokens == 16


def test_the_next_pass_takes_the_shortest_and_always_one():
    planned = deque(Item(1, index, [0] * length) for index, length in enumerate([2, 3, 3, 9]))
    assert [item.index for item in next_pass(planned, 8)] == [0, 1]
    # Longer than the pass's tokens: a pass of its own.
    assert [item.index for item in next_pass(planned, 2)] == [2]
    assert [item.index for item in next_pass(planned, 2)] == [3]
    assert next_pass(planned, 8) == [] and not planned

def test_demo_embed_vectors_are_mlx_embeddings_own_mean_pooled_normalised_vectors(cache_dir, demo_embed):
    import mlx.core as mx
    from mlx_embeddings.utils import load
    from transformers import AutoTokenizer

    embedder = _embedder(cache_dir, demo_embed)
    rows = embedder.inputs.of(p.Embed(1, TEXTS))
    ours = embedder.model.embed(rows)
    model, _tokenizer = load(str(demo_embed))
    encoded = AutoTokenizer.from_pretrained(demo_embed)(list(TEXTS), padding=True, return_tensors="np")
    assert [list(ids[: int(mask.sum())]) for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"])] == rows
    theirs = model(mx.array(encoded["input_ids"]), attention_mask=mx.array(encoded["attention_mask"])).text_embeds
    np.testing.assert_allclose(ours, np.array(theirs), atol=1e-5)


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _write(path: Path, value: object) -> None:
    path.write_text(json.dumps(value))


def test_pooling_and_normalisation_come_from_the_sentence_transformers_files_unless_set(cache_dir, demo_embed, tmp_path):
    import mlx.core as mx
    from mlx_embeddings.utils import load_model

    model_dir = _copy(demo_embed, tmp_path / "cls-model")
    pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
    _write(model_dir / "1_Pooling" / "config.json", dict(pooling, pooling_mode_mean_tokens=False, pooling_mode_cls_token=True))
    modules = json.loads((model_dir / "modules.json").read_text())
    _write(model_dir / "modules.json", modules[:2])  # no Normalize module
    embedder = _embedder(cache_dir, model_dir)
    assert (embedder.info.pooling, embedder.info.normalize) == ("cls", False)
    rows = embedder.inputs.of(p.Embed(1, TEXTS))
    ours = embedder.model.embed(rows)
    model = load_model(model_dir, path_to_repo=str(model_dir))
    for row, vector in zip(rows, ours):
        states = model(mx.array([row])).last_hidden_state
        np.testing.assert_allclose(vector, np.array(states[0, 0]), atol=1e-5)
    # The config file's settings over the files'.
    embedder = _embedder(cache_dir, model_dir, pooling="mean", normalize=True)
    assert (embedder.info.pooling, embedder.info.normalize) == ("mean", True)
    np.testing.assert_allclose(embedder.model.embed(rows), _embedder(cache_dir, demo_embed).model.embed(rows), atol=1e-6)


def test_a_model_whose_files_ask_for_what_is_not_computed_does_not_load(demo_embed, tmp_path):
    model_dir = _copy(demo_embed, tmp_path / "dense")
    modules = json.loads((model_dir / "modules.json").read_text())
    _write(model_dir / "modules.json", [*modules, {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}])
    settings = p.EmbeddingSettings(pooling=None, normalize=None, matryoshka=False, batch_tokens=64, pass_seconds=6.0)
    with pytest.raises(LoadError, match="sentence_transformers.models.Dense"):
        embedding_plan(model_dir, settings)
    _write(model_dir / "modules.json", modules)
    _write(model_dir / "1_Pooling" / "config.json", {"pooling_mode_max_tokens": True})
    with pytest.raises(LoadError, match="pooling_mode_max_tokens"):
        embedding_plan(model_dir, settings)
    # A pooling the config file names is taken instead.
    assert embedding_plan(model_dir, p.EmbeddingSettings(pooling="cls", normalize=None, matryoshka=False, batch_tokens=64, pass_seconds=6.0)).pooling == "cls"


def test_which_models_embed_and_their_context(cache_dir, demo_embed, tmp_path):
    assert is_embedding_model(demo_embed) and not is_embedding_model(ensure_demo_model(cache_dir))
    # An encoder without sentence-transformers files is one too, mean-pooled and normalised; its context the least its files say.
    bare = tmp_path / "bare"
    bare.mkdir()
    _write(bare / "config.json", {"model_type": "xlm-roberta", "max_position_embeddings": 514})
    _write(bare / "tokenizer_config.json", {"model_max_length": 512})
    assert is_embedding_model(bare)
    plan = embedding_plan(bare, p.EmbeddingSettings(pooling=None, normalize=None, matryoshka=False, batch_tokens=64, pass_seconds=6.0))
    assert (plan.architecture, plan.pooling, plan.normalize, plan.matryoshka, plan.max_tokens) == ("encoder", "mean", True, False, 512)


def test_a_generating_worker_never_imports_mlx_embeddings(cache_dir):
    """mlx-embeddings (and the mlx-vlm it imports) cost an embedding worker's start only."""
    import subprocess
    import sys

    probe = (
        "import sys; from pathlib import Path; import mlxtrio.worker._main as m; from mlxtrio.worker._embed import load_embedder; "
        f"from tests.worker.embed_worker import worker_config; m._load(worker_config(Path({str(cache_dir)!r}), 'demo')); "
        "print(sorted(name for name in sys.modules if name.split('.')[0] in ('mlx_embeddings', 'mlx_vlm')))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_a_cut_text_keeps_the_tokens_its_tokenizer_ends_it_with(cache_dir, demo_embed):
    embedder = _embedder(cache_dir, demo_embed)
    (cut,) = embedder.inputs.of(p.Embed(1, ("the orchestrator notices " * 300,), truncate=True))
    whole = embedder.inputs._encoder.text("the orchestrator notices " * 300, add_special_tokens=True)  # noqa: SLF001
    assert len(cut) == 512 and cut[:511] == whole[:511] and cut[-1] == whole[-1] != whole[511]


def test_any_model_mlx_lm_implements_embeds_by_its_last_token_when_told_to(cache_dir):
    config = msgspec.structs.replace(worker_config(cache_dir, "demo"), task="embed")
    embedder = load_embedder(config, ensure_demo_model(cache_dir))
    assert embedder.info == p.EmbeddingInfo(
        dimensions=64, max_tokens=4096, pooling="last", normalize=True, matryoshka=False, architecture="decoder"
    )
    rows = embedder.inputs.of(p.Embed(1, TEXTS))
    batch = embedder.model.embed(rows)
    for row, vector in zip(rows, batch):
        np.testing.assert_allclose(embedder.model.embed([row])[0], vector, atol=1e-6)


def test_a_model_that_neither_library_runs_does_not_load(cache_dir, demo_embed, tmp_path):
    model_dir = _copy(demo_embed, tmp_path / "nomic")
    config = json.loads((model_dir / "config.json").read_text())
    _write(model_dir / "config.json", dict(config, model_type="nomic_bert"))
    with pytest.raises(LoadError, match="'nomic_bert' is not one that mlx-lm .* implements, nor one of the encoders"):
        _embedder(cache_dir, model_dir)


def _tiny_encoder(demo_embed: Path, target: Path, model_type: str) -> Path:
    """A tiny random ``model_type`` encoder (mlx-embeddings' class) with demo-embed's tokenizer and sentence-transformers files."""
    import importlib

    import mlx.core as mx
    from mlx.utils import tree_flatten

    shutil.copytree(demo_embed, target)
    (target / "model.safetensors").unlink()
    config = json.loads((target / "config.json").read_text())
    config = {
        key: config[key] for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    }
    # XLM-RoBERTa numbers positions after its padding id: the tokenizer's.
    # As real checkpoints spell it: "xlm-roberta".
    config.update(model_type=model_type.replace("_", "-"), max_position_embeddings=514, pad_token_id=0, architectures=["XLMRobertaModel"])
    if model_type == "modernbert":
        config.update(max_position_embeddings=512, architectures=["ModernBertModel"])
    module = importlib.import_module(f"mlx_embeddings.models.{model_type}")
    mx.random.seed(3)
    model = module.Model(module.ModelArgs.from_dict(config))
    mx.save_safetensors(str(target / "model.safetensors"), dict(tree_flatten(model.parameters())))
    _write(target / "config.json", config)
    return target


@pytest.mark.parametrize("model_type", ["xlm_roberta", "modernbert"])
def test_the_other_encoders_mlx_embeddings_has_embed_padded_batches_as_it_does(cache_dir, demo_embed, tmp_path, model_type):
    import mlx.core as mx
    from mlx_embeddings.utils import load_model

    model_dir = _tiny_encoder(demo_embed, tmp_path / model_type, model_type)
    embedder = _embedder(cache_dir, model_dir)
    assert (embedder.info.architecture, embedder.info.pooling, embedder.info.max_tokens) == ("encoder", "mean", 512)
    rows = embedder.inputs.of(p.Embed(1, TEXTS))
    batch = embedder.model.embed(rows)
    model = load_model(model_dir, path_to_repo=str(model_dir))
    for row, vector in zip(rows, batch):
        np.testing.assert_allclose(embedder.model.embed([row])[0], vector, atol=1e-5)
        theirs = model(mx.array([row]), attention_mask=mx.ones((1, len(row)))).text_embeds
        np.testing.assert_allclose(vector, np.array(theirs[0]), atol=1e-5)


def test_a_vision_model_told_to_embed_does_not_load(cache_dir):
    from mlxtrio.worker._vision._demo import ensure_demo_vision_model

    config = msgspec.structs.replace(worker_config(cache_dir, "demo-vision"), task="embed")
    with pytest.raises(LoadError, match="vision model"):
        load_embedder(config, ensure_demo_vision_model(cache_dir))


def test_a_long_text_to_cut_is_tokenized_only_as_far_as_the_cut_needs(cache_dir, demo_embed, monkeypatch):
    """A request's text may be megabytes; its cut keeps the model's context: tokenizing all of it would stall the worker."""
    embedder = _embedder(cache_dir, demo_embed)
    inputs = embedder.inputs
    text = "the orchestrator notices a worker that hangs " * 100_000
    whole = inputs._encoder.text(text, add_special_tokens=True)  # noqa: SLF001
    tokenized: list[int] = []  # noqa: SLF001
    encode = inputs._encoder.text
    monkeypatch.setattr(inputs._encoder, "text", lambda given, **options: tokenized.append(len(given)) or encode(given, **options))
    (cut,) = inputs.of(p.Embed(1, (text,), truncate=True))
    limit = inputs.max_tokens
    assert cut == whole[: limit - 1] + whole[-1:]  # the first tokens of the whole text, and its end token
    assert sum(tokenized) < len(text) / 100, tokenized
