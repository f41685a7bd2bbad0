"""What both engines share: a request's admission, the prompt cache's keeping, and a token's way to its output."""

from __future__ import annotations

import abc
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import mlx.core as mx

from .._protocol import Delta, ErrorKind, Generate, SamplingParams, TokenLogprob
from ._failpoints import failpoint
from ._failures import FailurePolicy, RequestError
from ._grammar import GrammarCompiler
from ._mlx_lm import PromptCache, can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache
from ._output import SequenceOutput, new_output
from ._prompt import PromptTokens, keep_cache, nearest_cache, prompt_source
from ._prompt_logprobs import MOST_ECHOED_ENTRIES, prompt_logprobs
from ._sampling import Processor, model_params
from ._token_pieces import TokenPieces
from ._tools import tool_format
from ._vision import ImagePreparer, Prefilled, Vision, VisionPrefills, VisionTokens, mark_turned, ready_choices

if TYPE_CHECKING:
    from ._group import TokenShare

__all__ = ["EngineCore", "StepResult"]

# What a step produced: every sequence's delta, and the requests that failed in it.
StepResult = tuple[list[Delta], list[tuple[int, RequestError]]]


class EngineCore(FailurePolicy, abc.ABC):
    """The part of an engine that does not depend on how it decodes (the contract: ``_engine.Engine``)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        context_length: int | None,
        prompt_cache_bytes: int,
        progress: Callable[[], None],
        vision: Vision | None = None,
        share: TokenShare | None = None,
    ) -> None:
        super().__init__()
        # A worker group's: every rank samples rank 0's tokens (None: a worker of its own).
        self._share = share
        # Called between chunks of long work outside a step (a long prompt must not look like a hang).
        self._progress = progress
        self._model = model
        self._tokenizer = tokenizer
        # A vision model's images: their prompts and prefill (None: the model takes text only).
        self._vision = vision
        # A vision model's requests' images, decoded and processed off the loop's thread before admission (None: text only).
        self.images = ImagePreparer(vision) if vision is not None else None
        self._prompt_tokens = PromptTokens(tokenizer, context_length=context_length, vision=vision)
        self._eos = frozenset(tokenizer.eos_token_ids)
        # KV caches of finished sequences, by their tokens, bounded in bytes on every insert.
        self._prompt_cache = (
            PromptCache(max_size=1 << 20, max_bytes=prompt_cache_bytes) if prompt_cache_bytes > 0 else None
        )
        self.grammars = GrammarCompiler(tokenizer)
        self._pieces = TokenPieces(tokenizer)
        # The last prompt echoed: its ids, text and log probabilities (a prompt's choices are admitted together).
        self._echoed: tuple[list[int], str, tuple[TokenLogprob, ...]] | None = None
        # Caches remembered since the last settle(), perhaps not computed yet.
        self._unsettled: list[list[Any]] = []
        # Deltas made outside a step (a count, a sequence moving into the batch), sent with the next.
        self._carried: list[Delta] = []
        # Prompts with images being prefilled, a chunk per step; and choices prefilled, about to start.
        self._prefills = VisionPrefills()
        self._prefilled: dict[int, Prefilled] = {}

    def admit(self, request: Generate) -> int:
        """Start the request's sequences, one per choice (of each of its prompts): they share one tokenization of their prompt.
        Returns its first prompt's tokens.

        Should one of them fail to start, none goes on (the request fails as a whole).
        A count (``count_only``) starts none: each sequence's last delta, its prompt's count, goes out with the next step.
        """
        sequences = self._prompt_tokens.sequences(request)
        if request.count_only:
            self._carried.extend(Delta(choice.request_id, "", len(prompt), 0, "counted") for choice, prompt in sequences)
            return len(sequences[0][1])
        params = request.params
        if params.echo and params.logprobs:
            # Each sequence's first delta carries its prompt's entries, and a request's first deltas share a frame.
            entries = sum(len(prompt) for _, prompt in sequences) * (1 + params.top_logprobs)
            if entries > MOST_ECHOED_ENTRIES:
                raise RequestError(
                    ErrorKind.INVALID_REQUEST,
                    f"echo with logprobs would return {entries} log probabilities (prompt tokens x choices x (logprobs + 1)); "
                    f"at most {MOST_ECHOED_ENTRIES}: send a shorter prompt, fewer choices or fewer logprobs",
                    param="echo",
                )
        prompt = sequences[0][1]
        if isinstance(prompt, VisionTokens):
            self._admit_images([choice for choice, _ in sequences], prompt)
            return len(prompt)
        try:
            self._start(sequences)
        finally:
            # The echoed prompt's log probabilities live on in its sequences only.
            self._echoed = None
        return len(prompt)

    def _start(self, sequences: list[tuple[Generate, list[int]]]) -> None:
        """Start each sequence; should one fail, none goes on."""
        started: list[int] = []
        try:
            for choice, prompt in sequences:
                self._admit(choice, prompt)
                started.append(choice.request_id)
        except Exception:
            for request_id in started:
                self.cancel(request_id)
            raise

    def _admit_images(self, choices: list[Generate], prompt: VisionTokens) -> None:
        """A prompt with images starts from the nearest prompt cache entry, cut back to the start of an image it ends
        inside (the text between images is where the prefill puts it); what the entry does not hold is prefilled
        a chunk per step (``_prefills.py``), on from the entry's keys at their true positions (``_positions.py``)."""
        assert self._vision is not None
        cache, cached = nearest_cache(self._prompt_cache, prompt.key)
        if cached >= prompt.images_end:
            # The images are in the cache: the rest is text, which the engine prefills as any prompt's.
            self._vision.to_text_positions(prompt, cache)
            self._start_prefilled(ready_choices(choices, prompt, cache, cached, cached))
            return
        inside = next((first for first, end in prompt.spans if first < cached < end), None)
        if cache is not None and inside is not None:
            # The entry ends inside an image: the prefill starts over from that image, or from nothing where
            # the entry cannot be cut back (a sliding window past its size).
            if can_trim_prompt_cache(cache):
                trim_prompt_cache(cache, cached - inside)
                cached = inside
            else:
                cache = None
        if cache is None:
            cache, cached = make_prompt_cache(self._model), 0
        self._vision.to_true_positions(cache)
        self._prefills.add(choices, prompt, cache, cached, self._vision.prefill(prompt, cache, cached))

    def _start_prefilled(self, ready: list[Prefilled]) -> None:
        for choice in ready:
            self._prefilled[choice.request.request_id] = choice
        try:
            self._start([(choice.request, choice.prompt) for choice in ready])
        finally:
            for choice in ready:
                self._prefilled.pop(choice.request.request_id, None)

    def _advance_prefills(self) -> list[tuple[int, RequestError]]:
        """A chunk of the first waiting image prompt's prefill; its choices start once it is done (a step's first work)."""
        if not self._prefills:
            return []
        ready, failed = self._prefills.step()
        if failed is not None:
            request_ids, exc = failed
            return [(request_id, exc if isinstance(exc, RequestError) else self._failed(exc)) for request_id in request_ids]
        try:
            self._start_prefilled(ready)
        except Exception as exc:  # noqa: BLE001 - these choices fail, the batch goes on
            error = exc if isinstance(exc, RequestError) else self._failed(exc)
            return [(choice.request.request_id, error) for choice in ready]
        return []

    @abc.abstractmethod
    def _admit(self, request: Generate, prompt: list[int]) -> None:
        """Start one sequence of ``request`` on ``prompt``'s tokens."""

    @abc.abstractmethod
    def cancel(self, request_id: int) -> bool:
        """Stop the sequence; whether it was running."""

    @property
    @abc.abstractmethod
    def active(self) -> int:
        """How many sequences are running (or have output still to send)."""

    def _start_cache(self, request: Generate, prompt: list[int]) -> tuple[list[Any] | None, int, int]:
        """Where ``request``'s sequence starts: a KV cache (None: a fresh one), how many of ``prompt``'s tokens
        that cache holds, and how many of those came from the prompt cache (a prompt with images: as prefilled)."""
        prefilled = self._prefilled.get(request.request_id)
        if prefilled is not None:
            return prefilled.cache, prefilled.held, prefilled.hit
        cache, cached = nearest_cache(self._prompt_cache, prompt)
        if cache is not None and self._vision is not None:
            # The text before a kept prompt's first image, its keys perhaps turned for the text after its images.
            self._vision.to_true_positions(cache)
        return cache, cached, cached

    def _sampling(self, params: SamplingParams) -> SamplingParams:
        return model_params(params, getattr(self._tokenizer, "vocab_size", None))

    def _new_sequence(
        self, request: Generate, params: SamplingParams, prompt: list[int], cached: int, processors: list[Processor]
    ) -> SequenceOutput:
        sequence = new_output(self._tokenizer, self._pieces, request, params, prompt, cached, processors, parse_tools=self.tool_format is not None)
        if isinstance(prompt, VisionTokens):
            sequence.cache_key, sequence.position_shift = prompt.key, prompt.shift
        if params.echo:
            sequence.echo, sequence.echo_logprobs = self._echo(request, params, prompt)
        return sequence

    def _echo(self, request: Generate, params: SamplingParams, prompt: list[int]) -> tuple[str, tuple[TokenLogprob, ...]]:
        """The prompt's text and, with logprobs, its tokens' log probabilities: computed once for a prompt's choices."""
        echoed = self._echoed
        if echoed is None or echoed[0] is not prompt:
            source = prompt_source(request)
            text = source if isinstance(source, str) else self._tokenizer.decode(prompt)
            logprobs = prompt_logprobs(self._model, prompt, self._pieces, top=params.top_logprobs, progress=self._progress) if params.logprobs else ()
            echoed = self._echoed = (prompt, text, logprobs)
        return echoed[1], echoed[2]

    def _accept_token(self, sequence: SequenceOutput, token: int, logprobs: mx.array) -> Delta | None:
        """A token decoded outside mlx-lm's BatchGenerator (which stops at end tokens itself):
        an end token ends the sequence and is not part of its text."""
        if token in self._eos and not sequence.params.ignore_eos:
            return sequence.accept(None, "stop")
        return sequence.accept(token, None, logprobs)

    def _remember(self, tokens: list[int], cache: list[Any], sequence: SequenceOutput) -> None:
        if self._prompt_cache is not None:
            key = sequence.cache_key
            if sequence.position_shift:
                # Kept as it is, its keys turned as its sequence decoded (see _vision/_positions.py).
                mark_turned(cache, -sequence.position_shift)
            # A prompt with images is kept under its key (its image tokens named by their pixels).
            keep_cache(self._prompt_cache, tokens if key is None else key + tokens[len(key) :], cache)
            self._unsettled.append(cache)

    def _remember_held(self, cache: list[Any], seen: list[int], sequence: SequenceOutput) -> None:
        """Keep a finished sequence's cache. A pipelined decoder runs a step ahead
        of (or behind) what was read: the cache's own offset says how many of the
        tokens seen it holds."""
        if not can_trim_prompt_cache(cache):
            return
        held = cache[0].offset
        if 0 < held <= len(seen):
            self._remember(seen[:held], cache, sequence)

    def settle(self) -> None:
        """Compute the KV caches remembered since the last call; the worker calls it after each step's frame.

        A sequence leaving a batch leaves with its own rows of the batch's KV
        cache as mlx-lm extracts them: lazy arrays, slices of the whole
        batch's. Kept so in the prompt cache, each holds the batch's entire
        buffers alive, beyond the bytes the cache counts against its cap
        (tests/worker/test_prompt_cache.py), and the next request that uses
        one computes the slice in its own first step. Computed here, after
        the frame with the sequences' last tokens has gone out, they hold
        just their rows: at once when the engine is idle (so that its memory
        is what it says before the next request comes), asynchronously while
        it decodes (the step in flight is not waited for). Should that fail
        (out of memory, most likely), the prompt cache is emptied and
        serving goes on.
        """
        if not self._unsettled:
            return
        arrays = [layer.state for cache in self._unsettled for layer in cache]
        self._unsettled.clear()
        try:
            failpoint("settle")
            if self.active:
                mx.async_eval(arrays)
            else:
                mx.eval(arrays)
        except Exception as exc:  # noqa: BLE001 - a cache is a speed-up: dropped, not fatal
            print(f"mlxtrio worker: could not keep finished sequences' caches ({exc}); emptying the prompt cache", file=sys.stderr)
            if self._prompt_cache is not None:
                self._prompt_cache.trim_to(n_sequences=0)

    @property
    def prompt_cache_bytes(self) -> int:
        return 0 if self._prompt_cache is None else self._prompt_cache.nbytes

    @property
    def tool_format(self) -> str | None:
        return tool_format(self._tokenizer)
