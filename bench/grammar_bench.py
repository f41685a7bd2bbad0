"""Constrained-decoding libraries on issue 22's cases: what a schema costs to compile, to mask, and what is enforced.

    python -m bench.grammar_bench [--libraries outlines-core,llguidance,xgrammar]
        [--python xgrammar=/tmp/xgvenv/bin/python] [--parts compile,masks,coverage]
        [--timeout 20] [--memory-gib 4] [--steps 300] [--json OUT]

Issue 22 found two schema bombs in outlines-core: the regex it builds up
front from a schema grows by a factor per level of nesting, and its index
over the vocabulary takes exponential time for a bounded string
(``maxLength``). This measures each library on those shapes and on what a server needs
besides:

- **compile** (the issue's cases 1-3): arrays nested 4 to 30 deep; objects
  of 500 to 5,000 string properties, optional (also with
  ``additionalProperties: false``) and required (5,000 is a body of about
  1.1 MB, the issue's); a top-level string with a ``maxLength`` or
  ``minLength`` of 12 to 1,000. For each: the time to compile; the masks
  along the first tokens of a valid output, from a fresh matcher (the
  first, where llguidance builds its lexer lazily, then the slowest of the
  others; a grammar that compiles may still fail at a later token); the
  child's peak RSS; and the library's error text when it refuses;
- **masks** (case 4): a realistic schema (strings, an enum, a bounded
  integer, an array with ``maxItems``), walked for ``--steps`` tokens by
  1 and by 32 sequences at once, each computing its mask every step, one by
  one and, where the library has one, through its parallel batch call
  (llguidance's ``LLExecutor``, xgrammar's ``BatchGrammarMatcher``). Two
  walks: *documents*, where each sequence follows a valid document drawn by
  a seeded RNG (names, an e-mail, a city, ...; a finished document starts
  the next), so the masks are those of real output through every part of
  the schema; and *random*, where each step samples uniformly among the
  allowed tokens with a seeded RNG. With 150,000 tokens a uniform sample
  almost never closes a string, so the random walk mostly measures the
  in-string mask;
- **coverage** (case 5): for each JSON Schema keyword, one schema with one
  valid output and one that breaks only that keyword, both tokenized and
  fed to the library's matcher. *enforced*: the valid one is accepted and
  the invalid one is not; *ignored*: both are accepted; *refused*: the
  schema does not compile (with the library's message); *rejects valid*:
  the valid output is not accepted.

Every case runs in a child process of its own (this module with
``--child``), under an address-space limit (``RLIMIT_AS``, ``--memory-gib``)
and a wall-clock limit (``--timeout``, from the moment the child has loaded
its tokenizer), so an explosion is a result ("killed: address space over
4 GiB", "timeout > 20 s") and not a machine brought down. A child imports
only its library, NumPy and transformers, so a library with heavier needs
(xgrammar needs torch) runs under a Python of its own (``--python``): the
project does not depend on it.

Two tokenizers: the demo model's (a 512-token byte-level BPE) and a
byte-level BPE of Qwen2.5's vocabulary size (151,936 tokens) built by
``bench.bench_models.build_tokenizer``. Coverage uses the demo's; masks the large one.

Results and the machine they came from go in docs/PERFORMANCE.md
("Constrained decoding: library choice").
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import random
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ._common import ROOT, checkout_environment, write_json

LIBRARIES = ("outlines-core", "llguidance", "xgrammar")
MODELS_DIR = Path("/tmp/mlxtrio-bench-models")
# Loading a tokenizer and building a library's vocabulary (and importing
# torch, for xgrammar) is not what is measured; it gets its own limit.
SETUP_TIMEOUT = 180.0
# A mask walk at batch 32 does thousands of masks: more than one compile.
MASK_TIMEOUT_FACTOR = 6
# After compiling, the masks along a valid output's first tokens.
WALK_TOKENS = 64


# --- the cases ---------------------------------------------------------------


def nested_array(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


def wide_object(count: int, *, required: bool = False, closed: bool = False) -> dict:
    # Names and descriptions as a real form's would be, sized so that 5,000
    # properties make the issue's body of about 1.1 MB.
    properties = {
        f"customer_field_{index:05d}_value": {"type": "string", "description": f"Free text for field {index}. " * 6}
        for index in range(count)
    }
    schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(properties)
    if closed:
        schema["additionalProperties"] = False
    return schema


def compile_cases() -> list[tuple[str, dict, str]]:
    """(name, schema, an output valid against it, or the start of one: the masks are walked along it)."""
    cases = [(f"array nested {depth} deep", nested_array(depth), "[" * depth + '"some text"' + "]" * depth) for depth in (4, 6, 8, 10, 20, 26, 30)]
    kinds = (
        ("optional properties", {}),
        ("optional properties, additionalProperties false", {"closed": True}),  # as OpenAI's strict mode has objects
        ("required properties", {"required": True}),
    )
    for kind, options in kinds:
        for count in (500, 2000, 5000):
            schema = wide_object(count, **options)
            sample = json.dumps({name: f"text {index}" for index, name in enumerate(list(schema["properties"])[:8])})
            cases.append((f"object, {count} {kind}", schema, sample))
    text = "The quick brown fox jumps over the lazy dog. " * 25
    for keyword in ("maxLength", "minLength"):
        for length in (12, 16, 20, 1000):
            sample = json.dumps(text[: length if keyword == "minLength" else length // 2])
            cases.append((f"string {keyword} {length}", {"type": "string", keyword: length}, sample))
    return cases


# Case 4: what a structured-output request usually looks like.
MASK_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "email": {"type": "string"},
        "city": {"type": "string"},
        "status": {"enum": ["active", "inactive", "pending"]},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
    },
    "required": ["name", "email", "city", "status", "age", "tags"],
    "additionalProperties": False,
}
WORDS = "alpha river stone maple harbor quiet violet summit lantern copper meadow falcon".split()


def mask_documents(rng: random.Random, count: int) -> list[str]:
    """``count`` valid outputs for MASK_SCHEMA, drawn by ``rng``."""

    def words(low: int, high: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))

    return [
        json.dumps(
            {
                "name": words(2, 3).title(),
                "email": f"{rng.choice(WORDS)}.{rng.choice(WORDS)}@{rng.choice(WORDS)}.example",
                "city": words(1, 2).title(),
                "status": rng.choice(["active", "inactive", "pending"]),
                "age": rng.randint(0, 150),
                "tags": [rng.choice(WORDS) for _ in range(rng.randint(0, 5))],
            }
        )
        for _ in range(count)
    ]


def _object(name: str, schema: dict) -> dict:
    return {"type": "object", "properties": {name: schema}, "required": [name]}


def coverage_cases() -> list[tuple[str, dict, str, str]]:
    """(keyword, schema, a valid output, an output that breaks only that keyword)."""
    from typing import Optional

    from pydantic import BaseModel, Field

    class Bounded(BaseModel):
        count: int = Field(ge=1, le=10)
        name: str

    class Item(BaseModel):
        tags: list[str] = Field(max_length=2)
        price: Optional[float] = None  # noqa: UP045 - pydantic's anyOf-with-null, as users write it

    class Order(BaseModel):
        items: list[Item]

    node = {
        "type": "object",
        "properties": {"value": {"type": "integer"}, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
        "required": ["value", "children"],
        "additionalProperties": False,
    }
    integers = {"type": "array", "items": {"type": "integer"}}
    return [
        ("minimum/maximum (integer)", _object("n", {"type": "integer", "minimum": 1, "maximum": 10}), '{"n": 7}', '{"n": 11}'),
        ("minimum (number)", _object("n", {"type": "number", "minimum": 1.5}), '{"n": 2.25}', '{"n": 1.25}'),
        ("exclusiveMinimum", _object("n", {"type": "number", "exclusiveMinimum": 0}), '{"n": 0.5}', '{"n": 0}'),
        ("pattern", _object("s", {"type": "string", "pattern": "^[a-z]{3}-[0-9]{2}$"}), '{"s": "abc-12"}', '{"s": "abc-1x"}'),
        ("format: date-time", _object("s", {"type": "string", "format": "date-time"}), '{"s": "2024-05-01T12:30:00Z"}', '{"s": "yesterday"}'),
        ("format: email", _object("s", {"type": "string", "format": "email"}), '{"s": "a.b@example.com"}', '{"s": "not an email"}'),
        ("format: uuid", _object("s", {"type": "string", "format": "uuid"}), '{"s": "123e4567-e89b-12d3-a456-426614174000"}', '{"s": "123e4567"}'),
        ("minLength/maxLength (in an object)", _object("s", {"type": "string", "minLength": 2, "maxLength": 5}), '{"s": "abc"}', '{"s": "abcdefg"}'),
        ("minItems", {**integers, "minItems": 1, "maxItems": 3}, "[1, 2]", "[]"),
        ("maxItems", {**integers, "minItems": 1, "maxItems": 3}, "[1, 2]", "[1, 2, 3, 4]"),
        ("anyOf", _object("v", {"anyOf": [{"type": "integer"}, {"type": "boolean"}]}), '{"v": true}', '{"v": "x"}'),
        ("oneOf", _object("v", {"oneOf": [{"type": "integer"}, {"type": "boolean"}]}), '{"v": 3}', '{"v": "x"}'),
        (
            "allOf",
            {"allOf": [_object("a", {"type": "integer"}), _object("b", {"type": "string"})]},
            '{"a": 1, "b": "x"}',
            '{"a": 1}',
        ),
        (
            "$ref/$defs (recursive)",
            {"$defs": {"node": node}, "$ref": "#/$defs/node"},
            '{"value": 1, "children": [{"value": 2, "children": []}]}',
            '{"value": 1, "children": [{"value": "x", "children": []}]}',
        ),
        ("uniqueItems", {**integers, "uniqueItems": True}, "[1, 2]", "[1, 1]"),
        ("not", _object("v", {"not": {"type": "string"}}), '{"v": 1}', '{"v": "x"}'),
        ("const", _object("v", {"const": "fixed"}), '{"v": "fixed"}', '{"v": "other"}'),
        ("enum", _object("v", {"enum": ["red", "green", 3]}), '{"v": "green"}', '{"v": "blue"}'),
        ("required", {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a"]}, '{"a": 1}', '{"b": 1}'),
        (
            "additionalProperties: false",
            {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False},
            '{"a": 1}',
            '{"a": 1, "b": 2}',
        ),
        (
            "additionalProperties absent (extra keys valid)",
            {"type": "object", "properties": {"a": {"type": "integer"}}},
            '{"a": 1, "b": 2}',
            '{"a": "x"}',
        ),
        ("pydantic Field(ge=1, le=10)", Bounded.model_json_schema(), '{"count": 5, "name": "x"}', '{"count": 11, "name": "x"}'),
        (
            "pydantic nested ($defs, Optional, max_length)",
            Order.model_json_schema(),
            '{"items": [{"tags": ["a"], "price": null}]}',
            '{"items": [{"tags": ["a", "b", "c"], "price": 1.5}]}',
        ),
    ]


# --- the child: one library, one case ------------------------------------------


def progress(detail: dict) -> None:
    """Tell the parent how far a case got, for a child it may have to kill."""
    print(json.dumps({"progress": detail}), flush=True)


class Refused(Exception):
    """The library would not compile the schema: its message."""


def _library_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"


def _compile_guarded(compile_fn, schema: dict):  # noqa: ANN001, ANN202
    """``compile_fn(schema)``, with any error but running out of memory turned into Refused (a Rust panic is a BaseException)."""
    try:
        return compile_fn(schema)
    except (MemoryError, KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001
        raise Refused(_library_error(exc)) from exc


class OutlinesCore:
    """outlines-core: the schema to a regex, the regex to an index of states and allowed tokens, up front.

    The vocabulary is each token's exact bytes, built from the tokenizer the
    way a server using outlines-core must (GPT-2's byte alphabet decoded;
    SentencePiece's ``▁`` and ``<0xNN>``).
    """

    name = "outlines-core"

    def __init__(self, tokenizer) -> None:  # noqa: ANN001
        from .bench_models import byte_decoder
        from outlines_core import Guide, Index, Vocabulary
        from outlines_core.json_schema import build_regex_from_schema

        self._guide, self._index, self._regex = Guide, Index, build_regex_from_schema
        self.version = importlib.metadata.version("outlines_core")
        self.eos = tokenizer.eos_token_id
        self.vocab_size = len(tokenizer)
        decoder = byte_decoder()
        vocabulary = tokenizer.get_vocab()
        byte_level = sum(all(char in decoder for char in token) for token in vocabulary) > 0.9 * len(vocabulary)
        special = set(tokenizer.all_special_ids)
        tokens: dict[bytes, list[int]] = {}
        for token, token_id in vocabulary.items():
            if token_id in special or token_id == self.eos:
                continue
            if byte_level and all(char in decoder for char in token):
                raw = bytes(decoder[char] for char in token)
            elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
                raw = bytes([int(token[3:5], 16)])
            else:
                raw = token.replace("▁", " ").encode()
            tokens.setdefault(raw, []).append(token_id)
        tokens.pop(b"", None)
        self._vocabulary = Vocabulary(self.eos, tokens)
        self.detail: dict = {}

    def compile(self, schema: dict):  # noqa: ANN201
        started = time.perf_counter()
        progress({"stage": "the regex"})
        regex = _compile_guarded(lambda s: self._regex(json.dumps(s)), schema)
        self.detail = {"regex_bytes": len(regex), "regex_s": time.perf_counter() - started}
        progress({"stage": "the index", **self.detail})
        index = _compile_guarded(lambda _: self._index(regex, self._vocabulary), schema)
        self.detail["index_s"] = time.perf_counter() - started - self.detail["regex_s"]
        return index

    def matcher(self, index):  # noqa: ANN001, ANN201
        return self._guide(index)

    def fill(self, matchers: list, masks) -> None:  # noqa: ANN001
        for row, guide in enumerate(matchers):
            guide.write_mask_into(masks[row].ctypes.data, masks.shape[1], 4)

    def consume(self, guide, token: int) -> bool:  # noqa: ANN001
        try:
            # Without the list of the next state's allowed tokens, which the
            # default builds (150,000 Python ints in a string).
            guide.advance(token, return_tokens=False)
        except ValueError:
            return False
        return True

    def reset(self, guide) -> None:  # noqa: ANN001
        guide.reset()

    def accepts(self, index, tokens: list[int]) -> bool:  # noqa: ANN001
        state = index.get_initial_state()
        for token in tokens:
            state = index.get_next_state(state, token)
            if state is None:
                return False
        return index.is_final_state(state)


class LLGuidance:
    """llguidance: the schema to a grammar, parsed lazily (Earley parser, lexer built on demand) under its default limits."""

    name = "llguidance"

    def __init__(self, tokenizer) -> None:  # noqa: ANN001
        import llguidance
        import llguidance.hf

        self._ll = llguidance
        self.version = llguidance.__version__
        self.eos = tokenizer.eos_token_id
        self._tokenizer = llguidance.hf.from_tokenizer(tokenizer)
        self.vocab_size = self._tokenizer.vocab_size
        self._executor = llguidance.LLExecutor()
        self.detail: dict = {}
        self.parallel = True

    def compile(self, schema: dict):  # noqa: ANN201
        matcher_class = self._ll.LLMatcher
        grammar = _compile_guarded(matcher_class.grammar_from_json_schema, schema)
        # Default limits; errors without the parser's state and grammar, as mlxtrio's worker has them.
        limits = self._ll.LLParserLimits(verbose_errors=False)
        matcher = _compile_guarded(lambda _: matcher_class(self._tokenizer, grammar, log_level=0, limits=limits), schema)
        self.detail = {"grammar_bytes": len(grammar)}
        if matcher.is_error():
            raise Refused(matcher.get_error()[:300])
        return matcher

    def matcher(self, compiled):  # noqa: ANN001, ANN201
        return compiled.deep_copy()

    def fill(self, matchers: list, masks) -> None:  # noqa: ANN001
        for row, matcher in enumerate(matchers):
            matcher.unsafe_compute_mask_ptr(masks[row].ctypes.data, masks.shape[1] * 4)

    def fill_parallel(self, matchers: list, masks) -> None:  # noqa: ANN001
        self._executor.unsafe_compute_mask_ptr(
            [(matcher, row) for row, matcher in enumerate(matchers)], masks.ctypes.data, masks.shape[1] * 4, masks.shape[0]
        )

    def consume(self, matcher, token: int) -> bool:  # noqa: ANN001
        return matcher.consume_token(token)

    def reset(self, matcher) -> None:  # noqa: ANN001
        matcher.reset()

    def error(self, matcher) -> str:  # noqa: ANN001
        return matcher.get_error()[:300] if matcher.is_error() else ""

    def accepts(self, compiled, tokens: list[int]) -> bool:  # noqa: ANN001
        matcher = compiled.deep_copy()
        return matcher.try_consume_tokens(tokens) == len(tokens) and matcher.is_accepting()


class XGrammar:
    """xgrammar: the schema to a grammar, compiled with each rule's token masks precomputed (its defaults)."""

    name = "xgrammar"

    def __init__(self, tokenizer) -> None:  # noqa: ANN001
        import torch
        import xgrammar

        self._xgr, self._torch = xgrammar, torch
        self.version = f"{importlib.metadata.version('xgrammar')} (torch {torch.__version__})"
        self.eos = tokenizer.eos_token_id
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
        self.vocab_size = info.vocab_size
        self._compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)
        self._batch = xgrammar.BatchGrammarMatcher()
        self.detail: dict = {}
        self.parallel = True

    def compile(self, schema: dict):  # noqa: ANN201
        return _compile_guarded(lambda s: self._compiler.compile_json_schema(json.dumps(s)), schema)

    def matcher(self, compiled):  # noqa: ANN001, ANN201
        return self._xgr.GrammarMatcher(compiled)

    def fill(self, matchers: list, masks) -> None:  # noqa: ANN001
        tensor = self._torch.from_numpy(masks)
        for row, matcher in enumerate(matchers):
            matcher.fill_next_token_bitmask(tensor, row)

    def fill_parallel(self, matchers: list, masks) -> None:  # noqa: ANN001
        self._batch.batch_fill_next_token_bitmask(matchers, self._torch.from_numpy(masks))

    def consume(self, matcher, token: int) -> bool:  # noqa: ANN001
        return matcher.accept_token(token)

    def reset(self, matcher) -> None:  # noqa: ANN001
        matcher.reset()

    def accepts(self, compiled, tokens: list[int]) -> bool:  # noqa: ANN001
        matcher = self._xgr.GrammarMatcher(compiled)
        return all(matcher.accept_token(token) for token in tokens) and matcher.is_completed()


ADAPTERS = {adapter.name: adapter for adapter in (OutlinesCore, LLGuidance, XGrammar)}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _allowed(masks, row: int, vocab_size: int):  # noqa: ANN001, ANN202
    import numpy as np

    return np.unpackbits(masks[row].view(np.uint8), bitorder="little")[:vocab_size].nonzero()[0]


def run_compile(library, tokenizer, task: dict) -> dict:  # noqa: ANN001
    """Compile, then walk the masks along the first WALK_TOKENS tokens of a valid output.

    A grammar that compiles may still fail at a later token: llguidance's
    limits bound each step, not the compile (an object of many optional
    properties can fail at its first token, past the items a parser row may hold).
    """
    import numpy as np

    started = time.perf_counter()
    progress({"stage": "compiling"})
    try:
        compiled = library.compile(task["schema"])
    except Refused as exc:
        return {"refused": str(exc), "compile_s": time.perf_counter() - started, "detail": library.detail}
    compile_s = time.perf_counter() - started
    matcher = library.matcher(compiled)
    masks = np.zeros((1, (library.vocab_size + 31) // 32), dtype=np.int32)
    error = getattr(library, "error", lambda _: "")
    mask_s, walk_error = [], None
    for position, token in enumerate(tokenizer.encode(task["sample"], add_special_tokens=False)[:WALK_TOKENS]):
        progress({"stage": f"the mask for token {position}"})
        started = time.perf_counter()
        library.fill([matcher], masks)
        mask_s.append(time.perf_counter() - started)
        if error(matcher):
            walk_error = f"token {position}: {error(matcher)}"
        elif not (masks[0, token >> 5] >> (token & 31)) & 1:
            walk_error = f"token {position} of a valid output masked out"
        elif not library.consume(matcher, token):
            walk_error = f"token {position}: {error(matcher) or 'not accepted'}"
        if walk_error:
            break
    return {
        "compile_s": compile_s,
        "first_mask_s": mask_s[0],
        "later_mask_max_s": max(mask_s[1:], default=0.0),
        "walked": len(mask_s),
        "walk_error": walk_error,
        "detail": library.detail,
    }


def run_masks(library, tokenizer, task: dict) -> dict:  # noqa: ANN001
    """A walk of ``steps`` tokens by ``batch`` sequences: every step, every mask, then every sequence's token."""
    import numpy as np

    batch, steps, walk = task["batch"], task["steps"], task["walk"]
    fill = library.fill_parallel if task["parallel"] else library.fill
    compiled = library.compile(task["schema"])
    matchers = [library.matcher(compiled) for _ in range(batch)]
    masks = np.zeros((batch, (library.vocab_size + 31) // 32), dtype=np.int32)
    rngs = [random.Random(task["seed"] * 1000 + row) for row in range(batch)]
    # Each sequence's tokens to come (documents walk), refilled a document at a time.
    pending: list[list[int]] = [[] for _ in range(batch)]
    mask_s, consume_s, documents, rejected = [], [], 0, 0
    for _ in range(steps):
        for row in range(batch):
            if walk == "documents" and not pending[row]:
                pending[row] = tokenizer.encode(mask_documents(rngs[row], 1)[0], add_special_tokens=False)
                library.reset(matchers[row])
                documents += 1
        started = time.perf_counter()
        fill(matchers, masks)
        filled = time.perf_counter()
        chosen = []
        for row in range(batch):
            if walk == "documents":
                token = pending[row].pop(0)
                if not (masks[row, token >> 5] >> (token & 31)) & 1:
                    rejected += 1  # the mask forbids the valid document's next token: a wrong mask
            else:
                allowed = _allowed(masks, row, library.vocab_size)
                allowed = allowed[allowed != library.eos]
                token = int(allowed[rngs[row].randrange(len(allowed))]) if len(allowed) else None
            chosen.append(token)
        before_consume = time.perf_counter()
        for row, token in enumerate(chosen):
            if token is None or not library.consume(matchers[row], token):
                library.reset(matchers[row])  # finished (only the end is allowed) or, for documents, a wrong mask
        done = time.perf_counter()
        mask_s.append(filled - started)
        consume_s.append(done - before_consume)
    # The first step builds what a library builds lazily (llguidance's lexer):
    # the means are of the steps after it, and first_step_ms has it.
    step_s = sorted(mask + consume for mask, consume in zip(mask_s[1:], consume_s[1:]))
    tokens = (steps - 1) * batch
    return {
        "mask_us_per_token": sum(mask_s[1:]) / tokens * 1e6,
        "consume_us_per_token": sum(consume_s[1:]) / tokens * 1e6,
        "us_per_token": sum(step_s) / tokens * 1e6,
        "first_step_ms": (mask_s[0] + consume_s[0]) * 1e3,
        "step_ms_median": step_s[len(step_s) // 2] * 1e3,
        "step_ms_max": step_s[-1] * 1e3,
        "documents_started": documents,
        "document_tokens_rejected": rejected,
    }


def run_coverage(library, tokenizer, task: dict) -> dict:  # noqa: ANN001
    try:
        compiled = library.compile(task["schema"])
    except Refused as exc:
        return {"verdict": "refused", "message": str(exc)}
    valid = library.accepts(compiled, tokenizer.encode(task["valid"], add_special_tokens=False))
    invalid = library.accepts(compiled, tokenizer.encode(task["invalid"], add_special_tokens=False))
    if not valid:
        return {"verdict": "rejects valid", "message": "and the invalid" if not invalid else "but accepts the invalid"}
    return {"verdict": "ignored" if invalid else "enforced"}


def child() -> None:
    """One case, as the parent asked on stdin: "ready" once set up, then one JSON line of results."""
    task = json.loads(sys.stdin.read())
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(task["tokenizer"])
        started = time.perf_counter()
        library = ADAPTERS[task["library"]](tokenizer)
    except ImportError as exc:
        print(json.dumps({"unavailable": _library_error(exc)}), flush=True)
        return
    setup = {"setup_s": time.perf_counter() - started, "rss_setup_mb": _peak_rss_mb(), "version": library.version}
    print("ready", flush=True)
    print(json.dumps({"setup": setup}), flush=True)
    if task["kind"] == "compile":
        result = run_compile(library, tokenizer, task)
    elif task["kind"] == "masks":
        if task["parallel"] and not hasattr(library, "fill_parallel"):
            result = {"unavailable": "no parallel mask call"}
        else:
            result = run_masks(library, tokenizer, task)
    else:
        result = run_coverage(library, tokenizer, task)
    print(json.dumps(result), flush=True)


# --- the parent: children under limits -------------------------------------


class Lines:
    """Lines from a child's stdout, each waited for until a deadline."""

    def __init__(self, stream) -> None:  # noqa: ANN001
        self._fd = stream.fileno()
        self._buffer = b""
        self.closed = False  # the child closed its stdout: it exited or died

    def next(self, deadline: float) -> str | None:
        """The next line, or None if the child closed its stdout or ``deadline`` (monotonic) passed first."""
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._fd], [], [], left)[0]:
                return None
            chunk = os.read(self._fd, 65536)
            if not chunk:
                self.closed = True
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()


def run_child(python: str, task: dict, *, timeout: float, memory_bytes: int) -> dict:
    """``task`` in a child of ``python``, limited to ``memory_bytes`` of address space and ``timeout`` seconds after setup."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    gib = memory_bytes / 2**30
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(  # noqa: S603
            [python, "-m", "bench.grammar_bench", "--child"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
            preexec_fn=limit, cwd=ROOT, env=checkout_environment(),
        )
        process.stdin.write(json.dumps(task).encode())
        process.stdin.close()
        lines = Lines(process.stdout)
        started = time.monotonic()
        outcome, result, setup, progress_seen = None, {}, {}, {}
        line = lines.next(started + SETUP_TIMEOUT)
        if line == "ready":
            deadline = time.monotonic() + timeout
            while (line := lines.next(deadline)) is not None:
                message = json.loads(line)
                if "setup" in message:
                    setup = message["setup"]
                elif "progress" in message:
                    progress_seen.update(message["progress"])
                else:
                    result = message
                    break
            if line is None and not lines.closed:
                outcome = f"timeout > {timeout:.0f} s"
        elif line is not None:  # the library would not import
            result = json.loads(line)
        elif not lines.closed:
            outcome = f"timeout in setup > {SETUP_TIMEOUT:.0f} s"
        if outcome:
            process.kill()
        # wait4, not Popen.wait: the child's own peak RSS comes with its status.
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        process.stdout.close()
        stderr.seek(0)
        error_text = stderr.read().decode(errors="replace")
    if not result and outcome is None:
        last = (error_text.strip().splitlines() or ["(nothing on stderr)"])[-1][:200]
        if "MemoryError" in error_text or "memory allocation of" in error_text or "bad_alloc" in error_text:
            outcome = f"killed: address space over {gib:.0f} GiB"
        elif process.returncode < 0:
            outcome = f"crashed ({signal.Signals(-process.returncode).name}): {last}"
        else:
            outcome = f"failed (exit {process.returncode}): {last}"
    return {
        "progress": progress_seen,
        **setup,
        **result,
        "outcome": outcome,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "wall_s": time.monotonic() - started,
    }


# --- tables -------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def _regex(detail: dict) -> str:
    size = detail["regex_bytes"]
    size_text = f"{size / 1e6:,.1f} MB" if size >= 1e6 else f"{size / 1e3:,.1f} kB" if size >= 1e3 else f"{size} B"
    return f"regex {size_text} in {_ms(detail['regex_s'])}"


def compile_cell(result: dict) -> str:
    """Compile time + first mask, the slowest later mask, the child's peak RSS; or what ended it, and where."""
    if result.get("unavailable"):
        return "not installed"
    if result["outcome"]:
        cell = result["outcome"]
        if "stage" in result["progress"]:
            cell += f" in {result['progress']['stage']}"
        if "regex_bytes" in result["progress"]:
            cell += f" ({_regex(result['progress'])})"
        return cell + f"; peak {result['peak_rss_mb']:,.0f} MB"
    if "refused" in result:
        return f"refused in {_ms(result['compile_s'])}: {result['refused'][:120]}"
    cell = f"{_ms(result['compile_s'])} + {_ms(result['first_mask_s'])}"
    if result["walked"] > 1:
        cell += f", then ≤ {_ms(result['later_mask_max_s'])}"
    cell += f"; peak {result['peak_rss_mb']:,.0f} MB"
    if "regex_bytes" in result["detail"]:
        cell += f" ({_regex(result['detail'])})"
    if result["walk_error"]:
        # Its first two clauses: llguidance goes on with advice and state.
        cell += f"; **fails at {'; '.join(result['walk_error'].split('; ')[:2])[:100]}**"
    return cell


def mask_cell(result: dict) -> str:
    if result.get("unavailable"):
        return result["unavailable"]
    if result["outcome"]:
        return result["outcome"]
    cell = (
        f"{result['us_per_token']:,.0f} µs/token ({result['mask_us_per_token']:,.0f} in masks); "
        f"step: median {result['step_ms_median']:,.2f} ms, max {result['step_ms_max']:,.1f} ms"
    )
    if result.get("document_tokens_rejected"):
        cell += f"; {result['document_tokens_rejected']} valid tokens masked out"
    return cell


def coverage_cell(result: dict) -> str:
    if result.get("unavailable"):
        return "not installed"
    if result["outcome"]:
        return result["outcome"]
    if result["verdict"] == "rejects valid":
        return f"rejects the valid output ({result['message']})"
    if result.get("message"):
        return f"{result['verdict']} ({result['message'][:140]})"
    return result["verdict"]


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in row) + " |")


# --- main -----------------------------------------------------------------------


def tokenizer_dirs() -> dict[str, Path]:
    """The demo model's tokenizer and one of Qwen2.5's vocabulary size, built here if not yet."""
    from .bench_models import build, build_tokenizer

    large = MODELS_DIR / "grammar-bench-tokenizer-151k"
    if not (large / "tokenizer_config.json").exists():
        staging = large.with_name(large.name + ".partial")
        staging.mkdir(parents=True, exist_ok=True)
        build_tokenizer(staging)
        staging.rename(large)
    return {"demo (512)": build("demo", MODELS_DIR / "demo"), "BPE 151,936": large}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--libraries", default=",".join(LIBRARIES))
    parser.add_argument("--python", action="append", default=[], metavar="LIBRARY=PYTHON", help="the Python to run a library's cases under")
    parser.add_argument("--parts", default="compile,masks,coverage")
    parser.add_argument("--only", default="", help="run only the cases whose name contains this")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds a case may take after its setup")
    parser.add_argument("--memory-gib", type=float, default=4.0, help="address space a case's process may have")
    # A document is over a hundred tokens with the large tokenizer: 300 steps walk each sequence through two or more.
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child()
        return
    libraries = args.libraries.split(",")
    pythons = {library: sys.executable for library in libraries} | dict(item.split("=", 1) for item in args.python)
    parts = args.parts.split(",")
    tokenizers = tokenizer_dirs()
    limits = {"timeout": args.timeout, "memory_bytes": int(args.memory_gib * 2**30)}
    record: dict = {"machine": platform.platform(), "cpus": os.cpu_count(), "pythons": pythons, "results": []}

    def run(library: str, task: dict, *, timeout: float | None = None) -> dict:
        result = run_child(pythons[library], {**task, "library": library}, **{**limits, "timeout": timeout or args.timeout})
        saved = {key: value for key, value in task.items() if key != "schema"}
        record["results"].append({"library": library, **saved, **result})
        print(f"  {library:13} {task.get('case', '')}: {json.dumps({k: v for k, v in result.items() if k != 'detail'})[:300]}", file=sys.stderr, flush=True)
        return result

    if "compile" in parts:
        for tokenizer_name, directory in tokenizers.items():
            rows, setup_peak = [], dict.fromkeys(libraries, 0.0)
            for case, schema, sample in compile_cases():
                if args.only not in case:
                    continue
                task = {"kind": "compile", "case": case, "schema": schema, "sample": sample, "tokenizer": str(directory)}
                cells = []
                for library in libraries:
                    result = run(library, task)
                    setup_peak[library] = max(setup_peak[library], result.get("rss_setup_mb", 0.0))
                    cells.append(compile_cell(result))
                rows.append([case, f"{len(json.dumps(schema)):,} B", *cells])
            title = f"Compile, tokenizer {tokenizer_name}: compile + first mask, then the slowest of the next {WALK_TOKENS - 1} along a valid output; peak RSS"
            print_table(title, ["case", "schema", *libraries], rows)
            # What a child holds before any schema: the interpreter, the library, the tokenizer.
            print("\npeak RSS after setup: " + ", ".join(f"{library} {peak:,.0f} MB" for library, peak in setup_peak.items()))
    if "masks" in parts:
        rows = []
        for walk in ("documents", "random"):
            for batch in (1, 32):
                for parallel in (False, True):
                    task = {
                        "kind": "masks", "case": f"{walk}, batch {batch}{', parallel' if parallel else ''}", "schema": MASK_SCHEMA,
                        "tokenizer": str(tokenizers["BPE 151,936"]), "walk": walk, "batch": batch, "steps": args.steps,
                        "parallel": parallel, "seed": 1,
                    }  # fmt: skip
                    if args.only not in task["case"]:
                        continue
                    timeout = args.timeout * MASK_TIMEOUT_FACTOR
                    rows.append([task["case"], *(mask_cell(run(library, task, timeout=timeout)) for library in libraries)])
        print_table(f"Masks, tokenizer BPE 151,936, {args.steps} steps", ["walk", *libraries], rows)
    if "coverage" in parts:
        rows = []
        for keyword, schema, valid, invalid in coverage_cases():
            if args.only not in keyword:
                continue
            task = {"kind": "coverage", "case": keyword, "schema": schema, "valid": valid, "invalid": invalid, "tokenizer": str(tokenizers["demo (512)"])}
            rows.append([keyword, *(coverage_cell(run(library, task)) for library in libraries)])
        print_table("JSON Schema coverage", ["keyword", *libraries], rows)
    versions = {}
    for entry in record["results"]:
        versions.setdefault(entry["library"], entry.get("version"))
    print(f"\nversions: {versions}")
    if args.json:
        write_json(args.json, record)


if __name__ == "__main__":
    main()
