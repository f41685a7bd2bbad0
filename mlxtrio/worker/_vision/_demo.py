"""The built-in ``demo-vision`` model: a tiny LLaVA with seeded random weights and the demo's tokenizer.

Like ``demo`` (worker/_demo.py), its text is nonsense, but it takes the whole
real path for images offline: mlx-vlm's ``llava`` (a llama language model, a
CLIP vision tower, a projector), its processor (CLIP's image preprocessing,
each ``<image>`` expanded to the image's patch tokens) and a chat template
that renders content lists. LLaVA's language model takes plain 1D positions,
so once an image's prompt is prefilled its sequence decodes like a text one.

Its text is the demo's kind: it never samples a special token but the end of
a turn (``<image>`` included), a control byte or a piece of a character.
Different images give different answers to one question, the same image the
same: the projector is scaled so that image features steer the logits, and
the layers so that greedy text does not settle into repeating one token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import _demo

# Bump when anything below changes: a new version is a new directory.
DEMO_VISION_VERSION = 1
IMAGE_TOKEN = "<image>"
_IMAGE_SIZE = 56
_PATCH_SIZE = 14
# Each image's tokens in the prompt: its patches (the CLS position is dropped, the "default" strategy).
IMAGE_TOKENS_PER_IMAGE = (_IMAGE_SIZE // _PATCH_SIZE) ** 2
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_VISION_ARGS = {
    "model_type": "clip_vision_model",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "intermediate_size": 64,
    "num_attention_heads": 2,
    "image_size": _IMAGE_SIZE,
    "patch_size": _PATCH_SIZE,
    "projection_dim": 32,
    "num_channels": 3,
    "layer_norm_eps": 1e-5,
}
# The projector's output scale over its random init's: image features as large as they need to be
# to steer a random model's next token.
_PROJECTOR_GAIN = 4.0
# The language model's layers' scale over their random init's: at their init's, greedy text falls
# into a loop of one or two tokens within a few steps; this much larger, it keeps moving.
_LAYER_GAIN = 3.5
# The final norm's weight on the demo's constant dimension: the larger layers grow the residual
# stream, which shrinks that dimension after the norm; this puts the never-sampled tokens' logits
# back about 100 below every other's, as far as the demo's.
_CONSTANT_NORM_WEIGHT = 40.0
_SEED = 20261206


# The demo's template, with each message's content rendered by a macro that also takes a list of parts:
# {"type": "text", "text": ...} is its text, {"type": "image"} or {"type": "image_url"} is IMAGE_TOKEN.
_CONTENT_MACRO = (
    "{% macro content_of(content) %}"
    "{% if content is string %}{{ content }}"
    "{% elif content %}{% for part in content %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] in ('image', 'image_url') %}" + IMAGE_TOKEN + "{% endif %}"
    "{% endfor %}{% endif %}"
    "{% endmacro %}"
)


def _chat_template() -> str:
    template = _demo._CHAT_TEMPLATE
    for old, new in [
        ("{{ message['content'] or '' }}", "{{ content_of(message['content']) }}"),
        ("(message['content'] or '')", "content_of(message['content'])"),
    ]:
        assert template.count(old) == 1, old
        template = template.replace(old, new)
    return _CONTENT_MACRO + template


def demo_vision_model_path(cache_dir: Path) -> Path:
    return cache_dir / "models" / f"demo-vision-v{DEMO_VISION_VERSION}"


def ensure_demo_vision_model(cache_dir: Path) -> Path:
    """The demo-vision model's directory, built on first use."""
    return build_demo_vision_model(demo_vision_model_path(cache_dir))


def build_demo_vision_model(target: Path) -> Path:
    """The demo-vision model built into ``target``, unless it holds this version already; another version's is replaced."""
    return _demo.build_once(target, key="mlxtrio_demo_vision", version=DEMO_VISION_VERSION, build=_build)


def _build_tokenizer(
    directory: Path, *, tokens: tuple[str, ...] = (IMAGE_TOKEN,), chat_template: str = "", processor_class: str = "LlavaProcessor"
) -> None:
    """The demo's tokenizer with ``tokens`` added as special tokens, and a template that renders content parts."""
    from tokenizers import AddedToken, Tokenizer

    _demo._build_tokenizer(directory)
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in tokens])
    tokenizer.save(str(directory / "tokenizer.json"))
    config_file = directory / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.update(chat_template=chat_template or _chat_template(), processor_class=processor_class)
    config_file.write_text(json.dumps(config, indent=2))


def _build_processor(directory: Path) -> None:
    (directory / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "CLIPImageProcessor",
                "processor_class": "LlavaProcessor",
                "do_resize": True,
                "size": {"shortest_edge": _IMAGE_SIZE},
                "resample": 3,
                "do_center_crop": True,
                "crop_size": {"height": _IMAGE_SIZE, "width": _IMAGE_SIZE},
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "image_mean": _CLIP_MEAN,
                "image_std": _CLIP_STD,
                "do_convert_rgb": True,
            },
            indent=2,
        )
    )
    (directory / "processor_config.json").write_text(
        json.dumps(
            {
                "processor_class": "LlavaProcessor",
                "patch_size": _PATCH_SIZE,
                "vision_feature_select_strategy": "default",
                "image_token": IMAGE_TOKEN,
                # The CLS position, which the "default" strategy then drops again.
                "num_additional_image_tokens": 1,
            },
            indent=2,
        )
    )


def shape_language_model(language_model: Any, never_sampled: list[int]) -> None:
    """Scale a random llama-like language model (mlx-vlm's: ``model.layers``, ``lm_head``) to keep greedy text
    moving, and give it the demo's constant dimension, which holds ``never_sampled`` far down."""
    for layer in language_model.model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        for linear in (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj):
            linear.weight = linear.weight * _LAYER_GAIN
        for linear in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
            linear.weight = linear.weight * _LAYER_GAIN
    _demo.push_down_never_sampled(language_model, never_sampled)
    language_model.model.norm.weight[0] = _CONSTANT_NORM_WEIGHT


def shape_projector(projector: Any) -> None:
    """Scale the vision side's last linear layer (its output is an image position's embedding) to steer the answer."""
    projector.weight = projector.weight * _PROJECTOR_GAIN
    projector.bias = projector.bias * _PROJECTOR_GAIN
    # An image position holds the constant dimension too, like every token's embedding.
    projector.weight[0, :] = 0.0
    projector.bias[0] = _demo._CONSTANT


def _build(directory: Path) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_vlm.models.llava import Model, ModelConfig, TextConfig, VisionConfig
    from transformers import PreTrainedTokenizerFast

    _build_tokenizer(directory)
    _build_processor(directory)
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"))
    eos = tokenizer.convert_tokens_to_ids("<|end|>")
    image_token = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    never = _demo.never_sampled_ids(directory / "tokenizer.json", keep=(eos,))
    text_args = dict(_demo._MODEL_ARGS, vocab_size=len(tokenizer))
    config = {
        "model_type": "llava",
        "architectures": ["LlavaForConditionalGeneration"],
        "image_token_index": image_token,
        "vision_feature_select_strategy": "default",
        # The last layer's output: a layer before it would leave the last one's weights unused.
        "vision_feature_layer": -1,
        "vocab_size": len(tokenizer),
        "eos_token_id": eos,
        "text_config": text_args,
        "vision_config": _VISION_ARGS,
        "mlxtrio_demo_vision": DEMO_VISION_VERSION,
    }
    mx.random.seed(_SEED)
    model_config = ModelConfig.from_dict(config)
    model_config.text_config = TextConfig.from_dict(text_args)
    model_config.vision_config = VisionConfig.from_dict(_VISION_ARGS)
    model = Model(model_config)
    shape_language_model(model.language_model, never)
    shape_projector(model.multi_modal_projector.linear_2)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(directory / "model.safetensors"), weights, metadata={"format": "mlx"})
    (directory / "config.json").write_text(json.dumps(config, indent=2))
