"""Loading a vision model with mlx-vlm (pinned in pyproject.toml: ``mlx-vlm==0.7.10``), and its language model as mlx-lm's.

mlx-vlm loads the checkpoint, its processor and its vision tower. What
follows an image's prefill is text: the language model is rebuilt as
mlx-lm's own class of its architecture, holding the very same weight arrays
(nothing is copied), so every text path of the worker (continuous
batching, the prompt cache, sampling, grammars, logprobs) runs it unchanged,
and text-only requests to a vision model cost what they cost on its
language model alone. A vision model whose language model mlx-lm cannot
hold so is refused at load, in a sentence that says which.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs

__all__ = ["VisionParts", "load_vision"]


@attrs.frozen
class VisionParts:
    """A loaded vision model: mlx-vlm's whole model and processor, its language model as mlx-lm's, and that one's config."""

    model: Any
    processor: Any
    text_model: Any
    config: dict


def load_vision(path: Path) -> VisionParts:
    """The vision model in ``path``; ``ValueError`` (in a sentence) where mlx-vlm or mlx-lm cannot serve it.

    mlx-vlm is imported here only: a server without the vision extra serves text models as before.
    """
    try:
        from mlx_vlm.utils import load
    except ImportError as exc:
        raise ValueError(f"it is a vision model and mlx-vlm is not installed (pip install 'mlxtrio[vision]'): {exc}") from None
    from transformers.utils import logging

    # Its notices (no PyTorch, a deprecated processor option) are not the operator's concern: errors still show.
    logging.set_verbosity_error()
    config = json.loads((path / "config.json").read_text())
    model, processor = load(str(path))
    text_config = _text_config(config, model)
    return VisionParts(model, processor, _text_model(model, config, text_config), text_config)


def _text_config(config: dict, model: Any) -> dict:
    """The language model's config as mlx-lm reads one: the checkpoint's text_config, completed by mlx-vlm's."""
    from dataclasses import asdict, is_dataclass

    text = dict(config.get("text_config") or {})
    parsed = getattr(getattr(model, "config", None), "text_config", None)
    if is_dataclass(parsed):
        text = {**asdict(parsed), **text}
    if "quantization" in config:
        text.setdefault("quantization", config["quantization"])
    return text


def _text_model(model: Any, config: dict, text_config: dict) -> Any:
    """mlx-lm's model of the language model, on ``model.language_model``'s own arrays: mlx-lm's text-only class
    for the whole checkpoint where it has one (Qwen2-VL, Gemma 3, Mistral 3 ...), else its class for the
    language model's own architecture (LLaVA's llama)."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    language = model.language_model
    weights = tree_flatten(language.parameters())
    quantized = {
        path: {"group_size": module.group_size, "bits": module.bits, "mode": getattr(module, "mode", "affine")}
        for path, module in language.named_modules()
        if isinstance(module, nn.QuantizedLinear | nn.QuantizedEmbedding)
    }
    problems = []
    for candidate, prefix in ((config, "language_model."), (text_config, "")):
        try:
            model_class, args_class = _get_classes(candidate)
            text_model = model_class(args_class.from_dict(candidate))
            if quantized:
                nn.quantize(text_model, class_predicate=lambda path, _module: quantized.get(path.removeprefix(prefix), False))
            text_model.load_weights([(prefix + name, value) for name, value in weights], strict=True)
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"{candidate.get('model_type')!r}: {exc}")
            continue
        return text_model
    raise ValueError(f"its language model does not map onto a model mlx-lm implements ({'; '.join(problems)})")
