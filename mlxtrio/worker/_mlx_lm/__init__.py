"""The worker's use of mlx-lm, all of it, for mlx-lm 0.32 (``mlx-lm>=0.32.2,<0.33`` in pyproject.toml).

mlx-lm is pinned to one minor release because the worker subclasses its
classes, overrides their methods, sets their private attributes and
repeats parts of their code: ``BatchGenerator`` and its prompt batch
(``_generator.py``), the prompt cache and its trie (``_prompt_cache.py``),
the quantized layers (``_quantized.py``), the per-token computation of
``generate_step`` (``_solo.py``), what sits behind ``TokenizerWrapper``
(``_tokenizer.py``, the detokenizers' token maps among it), and loading (``_load.py``). The next mlx-lm upgrade
touches this folder: every other worker module takes mlx-lm through the
names below. The batched engine (``_batch.py``) alone also calls the
generator's ``next``, ``remove`` and ``close`` and reads ``next``'s
responses (``uid``, ``token``, ``logprobs``, ``finish_reason``,
``end_of_prompt``, ``prompt_cache``, ``all_tokens``) as they are, since
that happens for every token and nothing may stand between; the tests of
tests/worker/test_batch_first_token.py and test_generator.py are what
an upgrade that changes them meets first.
"""

from mlx_lm.generate import StopSequences, generate_step
from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p, make_logits_processors

from ._generator import Generator
from ._load import can_batch, download, llama_model, load, load_tokenizer, unsupported_architecture
from ._prompt_cache import PromptCache
from ._quantized import speed_up_quantized
from ._solo import Processor, Sampler, SoloDecoder
from ._tokenizer import apply_chat_template, chat_renderer, detokenizer, opens_thinking, set_chat_template, token_bytes, wrapped_tokenizer

__all__ = [
    "Generator",
    "Processor",
    "PromptCache",
    "Sampler",
    "SoloDecoder",
    "StopSequences",
    "apply_chat_template",
    "apply_min_p",
    "apply_top_k",
    "apply_top_p",
    "can_batch",
    "can_trim_prompt_cache",
    "chat_renderer",
    "detokenizer",
    "download",
    "generate_step",
    "llama_model",
    "load",
    "load_tokenizer",
    "make_logits_processors",
    "make_prompt_cache",
    "opens_thinking",
    "set_chat_template",
    "speed_up_quantized",
    "token_bytes",
    "trim_prompt_cache",
    "unsupported_architecture",
    "wrapped_tokenizer",
]
