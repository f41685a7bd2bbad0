"""Prompts go straight to the tokenizer's backend, and come out as the tokenizer's own calls give them."""

from __future__ import annotations

from pathlib import Path

import mlx_lm
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import processors

from mlxtrio import _protocol as p
from mlxtrio.worker._batch import BatchEngine
from mlxtrio.worker._demo import ensure_demo_model
from mlxtrio.worker._tokenize import PromptEncoder

from .engines import demo_engine


def _load(cache_dir: Path):  # noqa: ANN202
    return mlx_lm.load(str(ensure_demo_model(cache_dir)))[1]


@pytest.fixture(scope="module")
def tokenizer(cache_dir: Path):  # noqa: ANN201
    return _load(cache_dir)


@pytest.fixture(scope="module")
def tokenizer_with_bos(cache_dir: Path):  # noqa: ANN201
    """The demo tokenizer (a copy), made to add its BOS: so that whether special tokens are added shows."""
    wrapper = _load(cache_dir)
    backend = wrapper._tokenizer._tokenizer  # noqa: SLF001
    bos = wrapper.bos_token
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, backend.token_to_id(bos))]
    )
    return wrapper


_DEMO_SPECIAL = ["<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<think>", "</think>"]


def _reference_chat(tokenizer, messages: list[dict]) -> list[int]:  # noqa: ANN001
    """transformers' ids for the template as it is (no thinking switch set); where the messages spell the demo's special tokens, those are text
    (test_control_tokens.py): each message's text between the template's tokens, encoded with special tokens as text."""
    hf = tokenizer._tokenizer  # noqa: SLF001
    if not any(token in message["content"] for message in messages for token in _DEMO_SPECIAL):
        return list(hf.apply_chat_template(messages, add_generation_prompt=True, return_dict=False))
    backend = hf._tokenizer  # noqa: SLF001 - transformers' split_special_tokens would leave it set
    ids = [hf.convert_tokens_to_ids("<|bos|>")]
    for message in messages:
        ids.append(hf.convert_tokens_to_ids(f"<|{message['role']}|>"))
        # Less the two private-use characters that mark the control tokens (_control_tokens.py).
        content = message["content"].replace("\U000f0000", "").replace("\U000f0001", "")
        backend.encode_special_tokens = True
        try:
            ids += backend.encode(content, add_special_tokens=False).ids
        finally:
            backend.encode_special_tokens = False
        ids.append(hf.convert_tokens_to_ids("<|end|>"))
    return [*ids, hf.convert_tokens_to_ids("<|assistant|>")]


# Text that tokenizers treat specially: the demo's own special tokens, another
# model's, spaces, multi-byte characters, an emoji split across byte tokens;
# and the characters that mark control tokens (_control_tokens.py).
_PIECES = st.sampled_from(
    ["<|bos|>", "<|end|>", "<|user|>", "<|im_start|>", " ", "  ", "\n", "é", "日本", "🙂", "the", " cache", "\U000f0000", "\U000f0001"]
)
_TEXT = st.lists(st.one_of(st.text(max_size=12), _PIECES), max_size=8).map("".join)
_MESSAGES = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": _TEXT}), min_size=1, max_size=3
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=_MESSAGES, text=_TEXT)
def test_direct_ids_are_the_tokenizers(tokenizer, tokenizer_with_bos, messages: list[dict], text: str):
    encoder = PromptEncoder(tokenizer)
    assert encoder._usable()  # noqa: SLF001
    assert encoder.chat(messages) == _reference_chat(tokenizer, messages)
    for wrapper in (tokenizer, tokenizer_with_bos):
        encoder = PromptEncoder(wrapper)
        assert encoder._usable()  # noqa: SLF001
        for add in (True, False):
            assert encoder.text(text, add_special_tokens=add) == list(wrapper.encode(text, add_special_tokens=add))


def test_special_tokens_added_only_when_asked(tokenizer_with_bos):
    """The stand-in adds its BOS (else the test above could not tell the flag's two values apart);
    a chat prompt's template writes its own, so none is added to it."""
    encoder = PromptEncoder(tokenizer_with_bos)
    bos = tokenizer_with_bos.bos_token_id
    assert encoder.text("the cache", add_special_tokens=True)[0] == bos
    assert encoder.text("the cache", add_special_tokens=False)[0] != bos
    chat = encoder.chat([{"role": "user", "content": "the cache"}])
    assert chat == _reference_chat(tokenizer_with_bos, [{"role": "user", "content": "the cache"}])
    assert chat.count(bos) == 1  # the template's own


def test_backend_state_transformers_would_change_takes_its_path(cache_dir: Path):
    """A backend set to truncate, pad or split special tokens is set back by transformers on each call;
    the direct path would keep that state, so it is not taken then."""
    tokenizer = _load(cache_dir)
    backend = tokenizer._tokenizer._tokenizer  # noqa: SLF001
    encoder = PromptEncoder(tokenizer)
    messages = [{"role": "user", "content": "the cache of a worker and more words than four"}]
    expected = _reference_chat(tokenizer, messages)
    assert len(expected) > 4
    for change in (
        lambda: backend.enable_truncation(max_length=4),
        lambda: backend.enable_padding(length=len(expected) + 8),
        lambda: setattr(backend, "encode_special_tokens", True),
    ):
        change()
        assert not encoder._usable()  # noqa: SLF001
        assert encoder.chat(messages) == expected
        # transformers set the backend as it needs it, and the direct path is open again.
        assert encoder._usable()  # noqa: SLF001
        assert encoder.chat(messages) == expected


def test_tokenizer_without_a_backend_takes_its_own_path(tokenizer):
    class Plain:
        """A tokenizer with no Rust backend: a slow one, or one mlx-lm wraps differently."""

        def apply_chat_template(self, messages, **kwargs):  # noqa: ANN001, ANN003, ANN201
            return tokenizer._tokenizer.apply_chat_template(messages, return_dict=False, **kwargs)  # noqa: SLF001

        def encode(self, text, **kwargs):  # noqa: ANN001, ANN003, ANN201
            return tokenizer.encode(text, **kwargs)

    encoder = PromptEncoder(Plain())
    assert not encoder._usable()  # noqa: SLF001
    messages = [{"role": "user", "content": "the cache"}]
    assert encoder.chat(messages) == _reference_chat(tokenizer, messages)
    assert encoder.text("the cache", add_special_tokens=True) == list(tokenizer.encode("the cache"))


def test_engine_admits_through_the_direct_path(cache_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """The engine's chat and plain prompts reach the backend without transformers' encoding call."""
    model, tokenizer = mlx_lm.load(str(ensure_demo_model(cache_dir)))
    engine = demo_engine(BatchEngine, (model, tokenizer), prompt_cache_bytes=0)
    calls: list[str] = []
    hf = tokenizer._tokenizer  # noqa: SLF001
    original = type(hf).__call__

    def counting(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append("transformers")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(hf), "__call__", counting)
    params = p.SamplingParams(max_tokens=2, temperature=0.0)
    engine.admit(p.Generate(1, params, (p.ChatMessage("user", "the cache"),), None))
    engine.admit(p.Generate(2, params, None, "a worker"))
    assert calls == []
    assert engine.active


def test_tokenizer_class_with_its_own_encoding_takes_its_own_path(cache_dir: Path):
    """A class that changes how text is encoded (mlx-lm's NewlineTokenizer rewrites the text in ``encode``)
    keeps its own path: the backend alone would give other ids."""
    wrapper = _load(cache_dir)
    hf = wrapper._tokenizer  # noqa: SLF001

    class Rewriting(type(hf)):
        def encode(self, text, **kwargs):  # noqa: ANN001, ANN003, ANN201
            return super().encode(text.replace("\n", "<n>"), **kwargs)

    hf.__class__ = Rewriting
    encoder = PromptEncoder(wrapper)
    assert not encoder._usable()  # noqa: SLF001
    text = "the cache\na worker"
    expected = list(wrapper.encode(text, add_special_tokens=False))
    assert expected != hf._tokenizer.encode_batch_fast([text], add_special_tokens=False)[0].ids  # noqa: SLF001
    assert encoder.text(text, add_special_tokens=False) == expected
