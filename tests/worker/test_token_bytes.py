"""Log probabilities' tokens carry their own bytes: joined, they rebuild the text, even where a token holds part of a character."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm.tokenizer_utils import load as load_tokenizer
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from mlxtrio import _protocol as p
from mlxtrio.worker._output import SequenceOutput
from mlxtrio.worker._token_pieces import TokenPieces

# Characters of two, three and four bytes, among ASCII; the corpus merges some of their bytes, not all.
TEXT = "naïve café — 日本語 😀 ok, ça va? 🎉 Ünïcödé"
CORPUS = ["plain words and more words", "café crème", "naïve", "日本", "ok ok ok"] * 20


def _byte_level(directory: Path) -> None:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|end|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    tokenizer.save(str(directory / "tokenizer.json"))


def _sentencepiece_like(directory: Path) -> None:
    """BPE over "▁"-marked words, with byte tokens for characters outside its vocabulary (Llama 2's, Mistral's)."""
    tokenizer = Tokenizer(models.BPE(byte_fallback=True, unk_token=None))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    byte_tokens = [f"<0x{byte:02X}>" for byte in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|end|>", *byte_tokens], show_progress=False)
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    tokenizer.save(str(directory / "tokenizer.json"))


@pytest.fixture(params=[_byte_level, _sentencepiece_like], ids=["byte-level BPE", "SentencePiece-like"])
def tokenizer(request, tmp_path):  # noqa: ANN001, ANN201
    request.param(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|end|>"}))
    return load_tokenizer(tmp_path)


def _generated(tokenizer, ids: list[int], *, top: int) -> tuple[str, list[p.TokenLogprob]]:  # noqa: ANN001
    """The text and log probabilities of a sequence that generates ``ids``, as the worker reports them."""
    params = p.SamplingParams(max_tokens=len(ids) + 1, logprobs=True, top_logprobs=top)
    output = SequenceOutput(1, params, TokenPieces(tokenizer), tokenizer.detokenizer, prompt_tokens=1)
    # Equal odds for every token: the alternatives are any tokens at all, partial characters among them.
    logprobs = mx.full((len(tokenizer.vocab),), -6.0)
    text, entries = "", []
    for number, token in enumerate(ids):
        delta = output.accept(token, "length" if number == len(ids) - 1 else None, logprobs)
        if delta is not None:
            text += delta.text
            entries.extend(delta.logprobs)
    return text, entries


def test_joining_the_tokens_bytes_rebuilds_the_text(tokenizer):
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    text, entries = _generated(tokenizer, ids, top=0)
    assert text == TEXT
    assert len(entries) == len(ids)
    assert b"".join(entry.token_bytes for entry in entries) == TEXT.encode()
    # The case in point: tokens that hold part of a character, whose own text cannot show them.
    partial = [entry for entry in entries if entry.token_bytes and _invalid_utf8(entry.token_bytes)]
    assert partial, [entry.token_bytes for entry in entries]
    for entry in entries:
        assert entry.token == entry.token_bytes.decode("utf-8", errors="replace")


def test_alternatives_are_distinct_tokens_with_their_bytes(tokenizer):
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    _, entries = _generated(tokenizer, ids, top=5)
    for entry in entries:
        assert len(entry.top) == 5
        assert len({alternative.id for alternative in entry.top}) == 5
        for alternative in entry.top:
            assert alternative.token_bytes == TokenPieces(tokenizer).piece(alternative.id)[1]


def _invalid_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return True
    return False
