"""The orchestrator's reading of mlx-lm's source agrees with what mlx-lm's sharded_load decides, for every model module."""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import json
import pkgutil

import mlx.nn as nn
import mlx_lm.models
import pytest
from mlx_lm.models.base import BaseModelArgs
from mlx_lm.models.pipeline import PipelineMixin

from mlxtrio._group_support import group_refusal, mlx_lm_version, model_module, module_support


class _Anything:
    """Model arguments that answer every question, so that a model's constructor runs to its end without real sizes."""

    def __getattr__(self, name):
        if name.startswith("__") or name in ("pipeline", "shard"):
            raise AttributeError(name)
        return _Anything()

    def __call__(self, *args, **kwargs):
        return _Anything()

    def __getitem__(self, key):
        return _Anything()

    def __iter__(self):
        return iter(())

    def __len__(self):
        return 2

    def __bool__(self):
        return False

    def __index__(self):
        return 2

    __int__ = __index__

    def __float__(self):
        return 2.0

    def __contains__(self, item):
        return False

    def __eq__(self, other):
        return False

    def __hash__(self):
        return 0

    def _same(self, *args):
        return _Anything()

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _same
    __floordiv__ = __rfloordiv__ = __mod__ = __pow__ = __neg__ = _same

    def __lt__(self, other):
        return True  # an assert on a size passes

    __le__ = __gt__ = __ge__ = __lt__


def _subclasses(cls):
    for subclass in cls.__subclasses__():
        yield subclass
        yield from _subclasses(subclass)


def _stub(module):
    nn.Module.__init__(module)
    object.__setattr__(module, "_stub", True)


def _constructor(cls, init):
    # A model's own classes (Model, its language model, the layer stack's holder) run their constructors: they
    # decide what model.model is. Layers, and a PipelineMixin's holder (whose class alone decides), are stubs.
    real = cls.__name__.endswith("Model") and not issubclass(cls, PipelineMixin)

    @functools.wraps(init)
    def constructed(self, *args, **kwargs):
        if not real:
            return _stub(self)
        try:
            init(self, *args, **kwargs)
        except Exception:
            _stub(self)

    return constructed


def _stub_attribute(self, key):
    if key in self:
        return self[key]
    if self.__dict__.get("_stub") and key not in ("pipeline", "shard"):
        return _Anything()
    raise AttributeError(key)


@pytest.fixture(scope="module")
def truth():
    """Each importable model module's (pipeline, tensor), as sharded_load decides them on a constructed Model."""
    modules = {}
    for info in pkgutil.iter_modules(mlx_lm.models.__path__):
        # A module that cannot be imported here (a missing optional package) cannot be loaded by mlx-lm either.
        with contextlib.suppress(BaseException), contextlib.redirect_stdout(io.StringIO()):
            module = importlib.import_module(f"mlx_lm.models.{info.name}")
            if hasattr(module, "Model"):
                modules[info.name] = module
    patches = pytest.MonkeyPatch()
    answers = {}
    try:
        patches.setattr(BaseModelArgs, "from_dict", classmethod(lambda cls, settings: _Anything()))
        patches.setattr(nn.Module, "__getattr__", _stub_attribute)
        models = {module.Model for module in modules.values()}
        for cls in set(_subclasses(nn.Module)) - models:
            if "__init__" in cls.__dict__:
                patches.setattr(cls, "__init__", _constructor(cls, cls.__dict__["__init__"]))
        for name, module in modules.items():
            model = module.Model(_Anything())
            answers[name] = (hasattr(model, "model") and hasattr(model.model, "pipeline"), hasattr(model, "shard"))
    finally:
        patches.undo()
    return answers


def test_the_source_reading_agrees_with_sharded_load_for_every_module(truth):
    assert len(truth) > 100  # every model module of the pinned mlx-lm, not a few
    read = {}
    for name in truth:
        support = module_support(name)
        read[name] = None if support is None else (support.pipeline, support.tensor)
    assert read == truth
    # The cases: qwen2 pipelines, llama only splits by tensors.
    assert truth["qwen2"] == (True, True) and truth["llama"] == (False, True)


def _model_directory(path, **settings):
    path.mkdir()
    (path / "config.json").write_text(json.dumps(settings))
    return path


def test_a_pair_mlx_lm_cannot_run_is_refused_with_the_reason(tmp_path):
    version = mlx_lm_version()
    llama = _model_directory(tmp_path / "llama", model_type="llama")
    assert group_refusal(llama, "pipeline") == f'mlx-lm {version} cannot pipeline llama models: use parallel = "tensor"'
    assert group_refusal(llama, "tensor") is None
    # mistral loads as llama; qwen2 does both.
    assert "cannot pipeline mistral models" in group_refusal(_model_directory(tmp_path / "mistral", model_type="mistral"), "pipeline")
    assert group_refusal(_model_directory(tmp_path / "qwen2", model_type="qwen2"), "pipeline") is None
    assert group_refusal(_model_directory(tmp_path / "gpt2", model_type="gpt2"), "tensor") == (
        f"mlx-lm {version} cannot tensor-split gpt2 models: it cannot be sharded at all; serve it without hosts"
    )
    vision = _model_directory(tmp_path / "vision", model_type="qwen2_vl", vision_config={})
    assert "a vision model cannot be served by a worker group" in group_refusal(vision, "pipeline")
    # What the orchestrator cannot tell (no config, an unknown type) is left to rank 0's load.
    assert group_refusal(tmp_path / "missing", "pipeline") is None
    assert group_refusal(_model_directory(tmp_path / "odd", model_type="../etc"), "pipeline") is None


def test_the_module_follows_mlx_lm_s_remapping():
    assert model_module({"model_type": "mistral"}) == "llama"
    assert model_module({"model_type": "bailing_hybrid", "architectures": ["BailingMoeV3ForCausalLM"]}) == "bailing_moe_v3"
    assert model_module({"model_type": "qwen2"}) == "qwen2"
