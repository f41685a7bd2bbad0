"""The most characters a token stands for: a sound bound where one is given, none where a tokenizer can compress.

A prompt longer than ``chars_per_token * (context - max_tokens)`` characters
is refused untokenized (issue 22): that is right only if no text of ``N``
characters ever has fewer than ``N / chars_per_token`` tokens.
"""

from __future__ import annotations

import math
import unicodedata
from pathlib import Path

import mlx_lm
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers, trainers

from mlxtrio.worker._demo import ensure_demo_model
from mlxtrio.worker._prompt_bound import chars_per_token

_BYTES = [f"<0x{byte:02X}>" for byte in range(256)]
# Composed characters whose canonical decompositions are 4 characters long, Hangul syllables (3), spaces.
_DENSE = "\u1faf\u1f82\uac01 "
_CORPUS = [
    "the cache holds the prompt " * 3,
    "\u1faf" * 8 + " " + "\u1f82" * 8 + "  " + "\uac01" * 6,
    " " * 16 + "    indented    code    ",
]


def _llama2_like() -> Tokenizer:
    """SentencePiece-style BPE as Llama 2's tokenizer.json has it: byte fallback, unknowns fused,
    spaces as "\u2581" by a Replace, and (unlike Llama 2) NFC, so that text can compose 4 to 1."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", *_BYTES], show_progress=False)
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    return tokenizer


def _byte_level_nfkc() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|end|>"], show_progress=False
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    return tokenizer


def _whole_words() -> Tokenizer:
    """A vocabulary with a 4-character word of composed characters, taken whole (ignore_merges): its
    16-character decomposed spelling is one token after NFC, so the bound needs NFC's factor of 4."""
    dense = "\u1faf" * 4
    vocabulary = {"<unk>": 0, **{token: index + 1 for index, token in enumerate(_BYTES)}, dense: 257, "\u2581": 258}
    tokenizer = Tokenizer(models.BPE(vocab=vocabulary, merges=[], unk_token="<unk>", byte_fallback=True, ignore_merges=True))
    tokenizer.normalizer = normalizers.NFC()
    return tokenizer


@pytest.fixture(scope="module")
def bounded_tokenizers(cache_dir: Path) -> dict[str, Tokenizer]:
    demo = mlx_lm.load(str(ensure_demo_model(cache_dir)))[1]
    return {
        "demo": demo._tokenizer._tokenizer,  # noqa: SLF001
        "llama2_like": _llama2_like(),
        "byte_level_nfkc": _byte_level_nfkc(),
        "whole_words": _whole_words(),
    }


_HOSTILE = st.lists(
    st.sampled_from(
        [*_DENSE, *unicodedata.normalize("NFD", _DENSE), "\u1100", "\u1161", "\u11a8", "\u0301", "\u0345", "\uff21", "\u2581", "\n", "a", "\U0001f642", "<|end|>"]
    ),
    max_size=80,
).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(_HOSTILE, st.text(max_size=80)))
def test_no_text_has_fewer_tokens_than_the_bound_says(bounded_tokenizers, text: str):
    for name, tokenizer in bounded_tokenizers.items():
        per_token = chars_per_token(tokenizer)
        assert per_token is not None, name
        tokens = len(tokenizer.encode(text, add_special_tokens=False).ids)
        assert tokens >= math.ceil(len(text) / per_token), (name, text, tokens, per_token)


def test_composition_is_why_nfc_counts_four_characters_a_token(bounded_tokenizers):
    tokenizer = bounded_tokenizers["whole_words"]
    decomposed = unicodedata.normalize("NFD", "\u1faf" * 4)
    assert len(decomposed) == 16
    assert tokenizer.encode(decomposed, add_special_tokens=False).ids == [257]
    longest = max(map(len, tokenizer.get_vocab()))
    # The longest token alone would promise 3 tokens; the bound allows for NFC composing 4 into 1.
    assert math.ceil(len(decomposed) / longest) > 1
    assert chars_per_token(tokenizer) == 4 * longest


def _compressing() -> dict[str, tuple[Tokenizer, str]]:
    """Tokenizers that make some text of many characters into a few tokens, each with such a text."""
    vocabulary = {"<unk>": 0, "a": 1, "b": 2, "[UNK]": 3}

    def bpe(**options: object) -> Tokenizer:
        return Tokenizer(models.BPE(vocab=dict(vocabulary), merges=[], **options))

    whitespace = bpe(unk_token="<unk>")
    whitespace.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    stripped = bpe(unk_token="<unk>")
    stripped.normalizer = normalizers.Strip()
    fused = bpe(unk_token="<unk>", fuse_unk=True)
    dropped = bpe()
    word_piece = Tokenizer(models.WordPiece(vocab=dict(vocabulary), unk_token="[UNK]", max_input_chars_per_word=100))
    word_piece.pre_tokenizer = pre_tokenizers.Whitespace()
    unigram = Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0)], unk_id=0))
    swallowing = bpe(unk_token="<unk>")
    swallowing.add_tokens([AddedToken("b", rstrip=True)])
    return {
        "whitespace is dropped": (whitespace, "a" + " " * 200 + "a"),
        "a normalizer strips": (stripped, " " * 200 + "a"),
        "unknowns fuse": (fused, "\u00e9" * 200),
        "unknowns are dropped": (dropped, "\u00e9" * 200),
        "a long word is one unknown": (word_piece, "\u00e9" * 101),
        "a unigram fuses unknowns": (unigram, "\u00e9" * 200),
        "an added token swallows spaces": (swallowing, "b" + " " * 200 + "a"),
    }


@pytest.mark.parametrize("case", list(_compressing()))
def test_no_bound_for_a_tokenizer_that_can_compress(case: str):
    tokenizer, text = _compressing()[case]
    longest = max(map(len, tokenizer.get_vocab()))
    # The longest token alone would have refused this text.
    assert len(tokenizer.encode(text, add_special_tokens=False).ids) < len(text) / longest
    assert chars_per_token(tokenizer) is None
