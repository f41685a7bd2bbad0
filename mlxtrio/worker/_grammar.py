"""Grammar-constrained decoding with llguidance: a logits processor that allows only tokens the grammar can still take.

llguidance parses lazily (an Earley parser over a lexer built on demand),
so what a grammar costs is bounded by its limits (``LLParserLimits``: items
per row, lexer states, fuel per mask) rather than by the schema's shape,
where a regex compiled up front grows by a factor per level of nesting.
Schemas it cannot enforce are refused by name ("Unimplemented keys: ...")
instead of being enforced in part.

Compiling is still the requester's to make expensive (an object of thousands
of optional properties), so it runs off the decode loop: the worker's loop
hands a grammar it has not compiled yet to ``GrammarCompiler``'s thread and
admits the request once it is done, while the batch goes on decoding
(llguidance drops the GIL while it builds). Past the compile timeout the
request is refused with an error that names the limit. Compiled grammars are
kept in a small LRU per worker, bounded in count and in their schemas'
bytes: the same schema is usually asked for again.

The processor is an ordinary mlx-lm logits processor, so it works on both
engines and inside a batch: each sequence has its own matcher, a copy of the
compiled one.
"""

from __future__ import annotations

import json
import queue
import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import Any

import llguidance
import llguidance.hf
import mlx.core as mx
import numpy as np

from .. import _protocol as p
from ._mlx_lm import wrapped_tokenizer

__all__ = ["GrammarCompiler", "GrammarError", "GrammarProcessor"]

# Compiled grammars kept per worker: at most this many, and at most this many
# bytes of their schemas together. A compiled grammar's memory grows with its
# schema, many times its size, so a count alone would let distinct large
# schemas hold a worker's memory up.
_CACHE_SIZE = 32
_CACHE_BYTES = 128 * 1024
# An error message from llguidance can quote the grammar: enough to say what is wrong.
_MESSAGE_LIMIT = 500
# llguidance's defaults, but without the parser's state and grammar in its
# errors (they go back to the requester, and can be large).
_LIMITS = llguidance.LLParserLimits(verbose_errors=False)


class GrammarError(Exception):
    """A grammar that cannot be enforced: the request is invalid, and the error names its field."""

    def __init__(self, param: str, message: str) -> None:
        if len(message) > _MESSAGE_LIMIT:
            message = message[:_MESSAGE_LIMIT] + "..."
        super().__init__(f"{param}: the schema cannot be enforced: {message}")
        self.param = param


# How JSON is written (llguidance's options): as json.dumps writes it, the
# way models write it. Otherwise whitespace is free between any two tokens,
# and a model's whitespace can run on to max_tokens. A schema may say
# otherwise in its own "x-guidance".
_JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
# Keywords whose values are schemas, lists of schemas, or maps of them (JSON
# Schema 2020-12); the values of others (const, enum, default ...) are data.
_SUBSCHEMA = {"items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames", "unevaluatedProperties", "unevaluatedItems"}
_SUBSCHEMA_LISTS = {"anyOf", "oneOf", "allOf", "prefixItems"}
_SUBSCHEMA_MAPS = {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}


def _closed(schema: Any) -> Any:
    """``schema`` with objects that list ``properties`` closed to other keys, unless they say otherwise.

    As OpenAI's structured outputs require and other servers' grammar engines
    assume: a model given {"properties": {"city": ...}} is to write the city,
    not keys of its own choosing (with random weights, until max_tokens).
    Iterative: the schema's depth is the requester's.
    """
    stack = [schema]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        if isinstance(node.get("properties"), dict) and "additionalProperties" not in node and "unevaluatedProperties" not in node:
            node["additionalProperties"] = False
        for key, value in node.items():
            if key in _SUBSCHEMA:
                stack.append(value)
            elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
                stack.extend(value)
            elif key in _SUBSCHEMA_MAPS and isinstance(value, dict):
                stack.extend(value.values())
    return schema


def _grammar_text(grammar: p.Grammar) -> str:
    if grammar.syntax == "regex":
        return llguidance.LLMatcher.grammar_from_regex(grammar.text)
    if grammar.syntax not in ("json_schema", "json_tool_call"):
        raise ValueError(f"unknown grammar syntax {grammar.syntax!r}")
    try:
        schema = _closed(json.loads(grammar.text))
    except RecursionError:
        raise ValueError("the schema is nested too deeply") from None
    if grammar.syntax == "json_schema":
        return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_STYLE)
    # llguidance's Lark dialect embeds a JSON schema as a rule (%json), its
    # options inside; JSON text cannot end the rule early.
    own = schema.get("x-guidance") if isinstance(schema, dict) else None
    call = json.dumps({**schema, "x-guidance": {**_JSON_STYLE, **(own if isinstance(own, dict) else {})}})
    return llguidance.LLMatcher.grammar_from_lark(f'start: "<tool_call>" "\\n"? call "\\n"? "</tool_call>"\ncall: %json {call}\n')


def _mask_words(vocabulary: int) -> int:
    return (vocabulary + 31) // 32


class GrammarCompiler:
    """One per worker: the model's tokenizer for llguidance, a compile thread, and an LRU of compiled grammars.

    ``compiled``, ``keep`` and ``processor`` are for the worker's main thread;
    ``compile`` runs anywhere (``submit`` runs it on the compile thread).
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._lltokenizer: llguidance.LLTokenizer | None = None
        self._tokenizer_lock = threading.Lock()
        self._compiled: OrderedDict[p.Grammar, llguidance.LLMatcher] = OrderedDict()
        self._compiled_bytes = 0
        self._queue: queue.SimpleQueue[tuple[p.Grammar, Future]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # Grammars queued or compiling: requests for the same one share its compile.
        self._pending: dict[p.Grammar, Future] = {}
        hf = wrapped_tokenizer(tokenizer, tokenizer)
        self._eos = tuple(sorted(getattr(tokenizer, "eos_token_ids", None) or {hf.eos_token_id}))

    def _llg_tokenizer(self) -> llguidance.LLTokenizer:
        with self._tokenizer_lock:
            if self._lltokenizer is None:
                hf = wrapped_tokenizer(self._tokenizer, self._tokenizer)
                # ValueError for a slow (Python) tokenizer.
                self._lltokenizer = llguidance.hf.from_tokenizer(hf, eos_token=list(self._eos))
            return self._lltokenizer

    def compile(self, grammar: p.Grammar) -> llguidance.LLMatcher:
        """A matcher for ``grammar`` with its first mask computed; GrammarError if it cannot be enforced."""
        try:
            tokenizer = self._llg_tokenizer()
        except ValueError as exc:
            raise GrammarError(grammar.param, f"not with this model's tokenizer: {exc}") from exc
        try:
            text = _grammar_text(grammar)
        except ValueError as exc:
            raise GrammarError(grammar.param, str(exc)) from exc
        matcher = llguidance.LLMatcher(tokenizer, text, log_level=0, limits=_LIMITS)
        if not matcher.is_error():
            # The lexer's first state is built on demand: here, not in a decode step.
            mask = np.zeros(_mask_words(tokenizer.vocab_size), dtype=np.int32)
            matcher.unsafe_compute_mask_ptr(mask.ctypes.data, mask.nbytes)
        if matcher.is_error():
            raise GrammarError(grammar.param, matcher.get_error())
        return matcher

    def _run(self) -> None:
        while True:
            grammar, future = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self.compile(grammar))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting request
                future.set_exception(exc)

    def submit(self, grammar: p.Grammar) -> Future:
        """Compile ``grammar`` on the compile thread, one grammar at a time (its CPU is bounded too)."""
        if self._thread is None:
            # A daemon: a compile still running must not hold up the worker's exit.
            self._thread = threading.Thread(target=self._run, name="mlxtrio-grammar", daemon=True)
            self._thread.start()
        for done in [each for each, future in self._pending.items() if future.done()]:
            del self._pending[done]
        future = self._pending.get(grammar)
        if future is None:
            future = Future()
            self._pending[grammar] = future
            self._queue.put((grammar, future))
        return future

    def compiled(self, grammar: p.Grammar) -> bool:
        return grammar in self._compiled

    def keep(self, grammar: p.Grammar, matcher: llguidance.LLMatcher) -> None:
        self._pending.pop(grammar, None)
        if grammar not in self._compiled:
            self._compiled_bytes += len(grammar.text)
        self._compiled[grammar] = matcher
        self._compiled.move_to_end(grammar)
        # The newest stays, whatever its size: its requests are about to use it.
        while len(self._compiled) > 1 and (len(self._compiled) > _CACHE_SIZE or self._compiled_bytes > _CACHE_BYTES):
            evicted, _ = self._compiled.popitem(last=False)
            self._compiled_bytes -= len(evicted.text)

    def processor(self, grammar: p.Grammar) -> GrammarProcessor:
        """A processor for one sequence; compiles here if the grammar was not compiled ahead (in-process use)."""
        matcher = self._compiled.get(grammar)
        if matcher is None:
            matcher = self.compile(grammar)
            self.keep(grammar, matcher)
        else:
            self._compiled.move_to_end(grammar)
        return GrammarProcessor(matcher.deep_copy(), self._llg_tokenizer().vocab_size, self._eos)


class GrammarProcessor:
    """mlx-lm logits processor: ``(tokens so far, logits) -> logits`` with disallowed tokens at -inf.

    ``error`` is set when the matcher fails midway (a limit of llguidance's
    per-token work, say): from then on only an end token is allowed, so the
    sequence ends, and the engine reports the error instead of its text.
    """

    def __init__(self, matcher: llguidance.LLMatcher, vocabulary: int, eos: tuple[int, ...]) -> None:
        self._matcher = matcher
        self._eos = list(eos)
        self._mask = np.zeros(_mask_words(vocabulary), dtype=np.int32)
        self._seen: int | None = None
        self.error: str | None = None

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        matcher = self._matcher
        seen = tokens.size
        if self._seen is not None and seen > self._seen:
            # The tokens sampled since the last call (one, normally) move the matcher on.
            for token in tokens[self._seen :].tolist():
                # A pipelined engine may ask once more after the end token.
                if not matcher.is_stopped():
                    matcher.consume_token(int(token))
        self._seen = seen
        width = logits.shape[-1]
        if self.error is None and matcher.is_error():
            self.error = matcher.get_error()[:_MESSAGE_LIMIT]
        if self.error is None and not matcher.is_stopped():
            mask = self._mask
            matcher.unsafe_compute_mask_ptr(mask.ctypes.data, mask.nbytes)
            if not matcher.is_error():
                allowed = np.unpackbits(mask.view(np.uint8), bitorder="little")[:width].astype(bool)
                if allowed.size < width:
                    # Logits past the tokenizer's vocabulary (padding rows) are never allowed.
                    allowed = np.concatenate([allowed, np.zeros(width - allowed.size, dtype=bool)])
                return mx.where(mx.array(allowed), logits, -mx.inf)
            self.error = matcher.get_error()[:_MESSAGE_LIMIT]
        # Stopped, or failed: only an end token, and the sequence ends here.
        allowed = np.zeros(width, dtype=bool)
        allowed[[eos for eos in self._eos if eos < width]] = True
        return mx.where(mx.array(allowed), logits, -mx.inf)
