"""An embedding worker's loop: take every waiting ``Embed``, run their inputs in passes, answer each request whole.

Each request's inputs are tokenized and checked as it arrives (a bad one
fails its request at once). The inputs waiting are planned into passes
together (``_passes.py``), whatever request each comes from, each pass as
large as the model runs in a few seconds; the loop runs one pass, then
reads its ring again: a ``Cancel`` drops what is left of a
request, a ``Ping`` is answered, so that a long batch never looks like a
hang. Inputs that arrive meanwhile wait for the next plan, so none waits
behind newcomers for ever. A request's ``Embedded`` goes out when its last
input is done; a pass that fails fails the requests it held, and the loop
goes on.
"""

from __future__ import annotations

import time
from collections import deque

import attrs
import mlx.core as mx
import numpy as np

from ... import _protocol as p
from .._failpoints import failpoint
from .._failures import RequestError, generation_failure
from ._load import Embedder
from ._passes import Item, PassSize, next_pass, plan

__all__ = ["serve_embed"]


@attrs.define
class _Request:
    dimensions: int
    vectors: np.ndarray
    token_counts: list[int]
    remaining: int


def _dimensions(message: p.Embed, info: p.EmbeddingInfo) -> int:
    """The vectors' width for ``message``: all of the model's, or fewer of a Matryoshka model's."""
    wanted = message.dimensions
    if wanted is None or wanted == info.dimensions:
        return info.dimensions
    if not info.matryoshka:
        why = f"this model's vectors have {info.dimensions} dimensions and cannot be shortened"
    elif not 1 <= wanted <= info.dimensions:
        why = f"must be from 1 to {info.dimensions}"
    else:
        return wanted
    raise RequestError(p.ErrorKind.INVALID_REQUEST, f"dimensions: {wanted}: {why}", param="dimensions")


def _shortened(vectors: np.ndarray, dimensions: int, *, normalize: bool) -> np.ndarray:
    """The first ``dimensions`` of each vector, normalised again where the model normalises."""
    if dimensions == vectors.shape[1]:
        return vectors
    kept = vectors[:, :dimensions]
    if normalize:
        kept = kept / np.maximum(np.linalg.norm(kept, axis=1, keepdims=True), 1e-12)
    return kept


def serve_embed(channel, embedder: Embedder, send, watch) -> int:  # noqa: ANN001
    decode = p.TO_WORKER.decode
    receive = channel.reader.receive
    info = embedder.info
    requests: dict[int, _Request] = {}
    # Inputs tokenized and not yet planned; inputs planned (shortest first) and not yet run.
    waiting: list[Item] = []
    planned: deque[Item] = deque()
    size = PassSize(limit=embedder.settings.batch_tokens, seconds=embedder.settings.pass_seconds)

    def take(message: p.Embed) -> None:
        try:
            dimensions = _dimensions(message, info)
            rows = embedder.inputs.of(message)
        except RequestError as exc:
            send(p.RequestFailed(message.request_id, exc.kind, str(exc), exc.param, exc.code))
            return
        except Exception as exc:  # noqa: BLE001 - one bad request must not take the others down
            send(p.RequestFailed(message.request_id, p.ErrorKind.INTERNAL, f"could not tokenize the inputs: {type(exc).__name__}: {exc}"))
            return
        vectors = np.zeros((len(rows), info.dimensions), dtype=np.float32)
        requests[message.request_id] = _Request(dimensions, vectors, [len(row) for row in rows], len(rows))
        waiting.extend(Item(message.request_id, index, row) for index, row in enumerate(rows))

    while True:
        busy = bool(waiting or planned)
        frame = receive(timeout=0) if busy else receive(timeout=None, interrupt=watch)
        while frame is not None:
            message = decode(frame)
            if isinstance(message, p.Embed):
                take(message)
                # Progress: tokenizing a queue of large requests must not look like a hang.
                send(p.Step(()))
            elif isinstance(message, p.Cancel):
                requests.pop(message.request_id, None)
            elif isinstance(message, p.Ping):
                send(p.Pong(message.nonce, len(requests), 0, mx.get_active_memory()))
            elif isinstance(message, p.Shutdown):
                return p.WorkerExit.OK
            elif isinstance(message, p.Generate):
                text = "this model is an embedding model: it embeds inputs (/v1/embeddings) and does not generate text"
                send(p.RequestFailed(message.request_id, p.ErrorKind.INVALID_REQUEST, text, "model", "model_not_generative"))
            frame = receive(timeout=0)
        if not planned:
            planned = plan(waiting)
            waiting = []
        # A cancelled request's inputs are dropped as their pass comes.
        items: list[Item] = []
        while planned and not items:
            items = [item for item in next_pass(planned, size.tokens) if item.request_id in requests]
        if not items:
            continue
        watch()
        started = time.perf_counter()
        if _run_pass(embedder, items, requests, send):
            size.measured(len(items) * max(len(item.ids) for item in items), time.perf_counter() - started)


def _run_pass(embedder: Embedder, items: list[Item], requests: dict[int, _Request], send) -> bool:  # noqa: ANN001
    """One forward pass; each request it finishes answered, each it held failed if it fails; else a heartbeat.
    Whether it ran."""
    try:
        failpoint("embed")
        vectors = embedder.model.embed([item.ids for item in items])
    except Exception as exc:  # noqa: BLE001 - the pass's requests fail; the worker goes on
        kind = generation_failure(exc).kind
        text = f"embedding ran out of memory: {exc}" if kind is p.ErrorKind.OUT_OF_MEMORY else f"embedding failed: {type(exc).__name__}: {exc}"
        for request_id in dict.fromkeys(item.request_id for item in items):
            del requests[request_id]
            send(p.RequestFailed(request_id, kind, text))
        return False
    answered = False
    for item, vector in zip(items, vectors):
        request = requests[item.request_id]
        request.vectors[item.index] = vector
        request.remaining -= 1
        if request.remaining == 0:
            del requests[item.request_id]
            rows = _shortened(request.vectors, request.dimensions, normalize=embedder.info.normalize)
            send(p.Embedded(item.request_id, request.dimensions, rows.astype("<f4").tobytes(), tuple(request.token_counts)))
            answered = True
    if not answered:
        # Progress: a pass went by with no request finished.
        send(p.Step(()))
    return True
