"""The worker's main loop: poll the request ring, admit, one step, one frame, repeat.

Plain synchronous Python on the main thread, where MLX runs. Idle, it blocks
on the request ring (in short slices that check the orchestrator is still
there); busy, it polls the ring without blocking between steps. It exits when
told to, when the orchestrator is gone, or when the channel breaks.

Before the first step of a batch (the batched engine was idle), a ring
found empty is waited on a little longer while the last ``Generate`` said
more would follow (``Generate.followers``, orchestrator/_intake.py): up to
``FOLLOWER_WAIT`` for each, ``FORMING_LIMIT`` in all. A burst then starts as
one batch instead of a few requests and then the rest, each part paying for
a first step of its own. A request alone is told nothing follows, and waits
for nothing.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import msgspec

from .. import _protocol as p
from ..tuning import (
    allocator_in_use,
    allowed_cpus,
    batch_this_process,
    blas_in_use,
    choose_core,
    choosing_cpus,
    held_cpus,
    load_worker_blas,
    other_workers_cpus,
    pin_this_process,
    scheduling_policy,
)
from .._models import model_directory_problem, takes_images, weights_size
from ..ipc import Channel, ChannelSpec, IPCError, PeerGoneError, ProtocolError, parent_watch
from ._failpoints import failpoint
from ._group import GroupBroken, devices_before_mlx, lead
from ._model_source import LoadError, model_path

# Not a message: 0xc1 is the one byte MessagePack never uses.
_CORRUPT_FRAME = b"\xc1 not a message"
# Before a batch's first step: the longest wait for one announced Generate
# (several times the orchestrator's intake of a request), and for all.
FOLLOWER_WAIT = 0.002
FORMING_LIMIT = 0.020
# Idle but for grammars compiling or images being prepared: how often the loop looks whether one is done.
COMPILE_POLL = 0.002


def _pin(config: p.WorkerConfig) -> tuple[int, ...]:
    """Pin this process as configured (see mlxtrio/tuning/_affinity.py); the CPUs it is pinned to."""
    import mlx.core as mx

    if not config.cpus:
        return ()
    auto = config.cpus_for_cpu_backend_only
    if auto and mx.default_device().type != mx.DeviceType.cpu:
        return ()
    # Until pinned: a worker choosing at the same moment sees this one's choice.
    with choosing_cpus():
        cpus = config.cpus
        if auto:
            allowed, others = allowed_cpus(), other_workers_cpus()
            core = choose_core(cpus[0], allowed, held_cpus(others.values(), allowed))
            if core is None:
                holders = ", ".join(
                    f"pid {pid} on {','.join(map(str, sorted(held)))}"
                    for pid, held in sorted(others.items())
                    if not set(allowed) <= held
                )
                print(f"mlxtrio worker: every CPU is held by another mlxtrio worker ({holders}); running unpinned", file=sys.stderr)
                return ()
            cpus = (core,)
        try:
            if not pin_this_process(cpus):
                return ()
        except OSError as exc:
            # A speed-up, not a condition of serving: say so and go on unpinned.
            print(f"mlxtrio worker: could not pin to CPUs {cpus}: {exc}; running unpinned", file=sys.stderr)
            return ()
    if len(cpus) == 1:
        # Both of MLX's threads on one core: no wake-up preemption between them (see mlxtrio/tuning/_affinity.py).
        try:
            batch_this_process()
        except OSError as exc:
            print(f"mlxtrio worker: could not set SCHED_BATCH: {exc}; running under the default policy", file=sys.stderr)
    return cpus


def _load(config: p.WorkerConfig):  # noqa: ANN202 - (model or Embedder, tokenizer, context length, memory, vision)
    import mlx.core as mx

    # First: it readies transformers' index before mlx-lm imports transformers (_model_source.py).
    path = model_path(config)
    from ._embed import is_embedding_model, load_embedder
    from ._mlx_lm import load, set_chat_template, speed_up_quantized, unsupported_architecture

    vision = takes_images(path)
    embeds = is_embedding_model(path) if config.task == "auto" else config.task == "embed"
    # Checked before mlx-lm reads the files, whose own errors name a file, not the problem.
    problem = model_directory_problem(path) or (None if vision or embeds else unsupported_architecture(path))
    if problem is not None:
        raise LoadError(problem)
    size = weights_size(path)
    if size > config.memory_budget_bytes:
        raise LoadError(
            f"its weights are {size} bytes; the memory budget is {config.memory_budget_bytes} bytes",
            kind=p.ErrorKind.OUT_OF_MEMORY,
            code="model_too_large",
        )
    if embeds:
        return load_embedder(config, path), None, None, mx.get_active_memory(), None
    images = None
    if vision:
        model, tokenizer, model_config, images = _load_vision(config, path)
    else:
        try:
            model, tokenizer, model_config = load(path)
        except Exception as exc:  # noqa: BLE001 - whatever mlx-lm raises (memory, a weight it cannot map) is this load's failure
            raise LoadError(f"mlx-lm could not load it: {type(exc).__name__}: {exc}") from exc
    # A batched step hands each quantized projection one matrix of rows; on
    # the CPU backend they compute in float32, many times faster there (see _mlx_lm/_quantized.py).
    speed_up_quantized(model)
    if config.chat_template is not None:
        # The operator's template replaces the tokenizer's.
        set_chat_template(tokenizer, config.chat_template)
    context = model_config.get("max_position_embeddings")
    return model, tokenizer, context, mx.get_active_memory(), images


def _load_vision(config: p.WorkerConfig, path: Path):  # noqa: ANN202 - (text model, tokenizer, its config, Vision)
    """A vision model: mlx-vlm's, its language model as mlx-lm's (see _vision/_load.py), and mlx-lm's tokenizer of it."""
    from ._mlx_lm import load_tokenizer
    from ._vision import Vision, load_vision

    try:
        parts = load_vision(path)
        tokenizer = load_tokenizer(path, eos_token_ids=parts.config.get("eos_token_id"))
        vision = Vision(parts, max_pixels=config.image_max_pixels, prefill_step_size=config.prefill_step_size)
    except ValueError as exc:
        raise LoadError(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - as for a text model: this load's failure, whatever it is
        raise LoadError(f"mlx-vlm could not load it: {type(exc).__name__}: {exc}") from exc
    return parts.text_model, tokenizer, parts.config, vision


def main(argv: list[str]) -> int:
    if argv[:1] == ["--rank"]:
        # Another rank of a worker group: no channel, it follows rank 0 (_group/_follower.py).
        from ._group import follow

        return follow(int(argv[1]), msgspec.json.decode(argv[2], type=p.WorkerConfig))
    config = msgspec.json.decode(argv[0], type=p.WorkerConfig)
    channel = Channel.attach(ChannelSpec.from_json(argv[1]))
    watch = parent_watch()
    encode = p.TO_ORCHESTRATOR.encode

    def send(message: p.ToOrchestrator) -> None:
        if failpoint("send") == "corrupt":
            channel.writer.send(_CORRUPT_FRAME, interrupt=watch)
        channel.writer.send(encode(message), interrupt=watch)

    def heartbeat() -> None:
        # An empty step: progress during a long prefill.
        send(p.Step(()))

    if config.group is not None:
        # Before MLX is imported: which GPU this rank takes.
        devices_before_mlx(config.group, 0)
    leader = None
    try:
        send(p.Hello(os.getpid()))
        started = time.monotonic()
        try:
            failpoint("load")
            # Before MLX is imported (by _pin): MLX's calls must find this BLAS first.
            load_worker_blas(config.blas_library, cpus=config.cpus if config.group is None else ())
            if config.group is None:
                cpus = _pin(config)
                model, tokenizer, context, memory, vision = _load(config)
            else:
                if config.task == "embed":
                    raise LoadError("a worker group serves generation only; serve an embedding model without hosts")
                # A group's ranks are not pinned: every rank must read its first tokens alike (_group/_rank.py).
                cpus = ()
                leader, ranks = lead(config, interrupt=watch, progress=heartbeat)
        except Exception as exc:  # noqa: BLE001 - any load failure is reported, not swallowed
            failure = exc if isinstance(exc, LoadError) else LoadError(f"{type(exc).__name__}: {exc}")
            where = f"from {config.location}" if config.location else "(the built-in demo)"
            send(p.LoadFailed(failure.kind, f"cannot load model {config.model_id!r} {where}: {failure}", failure.code))
            return p.WorkerExit.LOAD_FAILED
        # MLX comes in only now: Hello went out first, so the orchestrator
        # could unlink the channel's names while this imports and loads.
        import mlx.core as mx

        from ._embed import Embedder, serve_embed
        from ._engine import make_engine

        if leader is not None:
            return _serve_group(channel, leader, ranks, config, send, watch, started)
        if isinstance(model, Embedder):
            send(_ready(config, started, memory, None, cpus, embedding=model.info))
            return serve_embed(channel, model, send, watch)
        engine = make_engine(
            model,
            tokenizer,
            config,
            context_length=context,
            # One core for both of MLX's threads: reading a first token early costs no overlap there.
            first_tokens_always_early=len(cpus) == 1 and mx.default_device().type == mx.DeviceType.cpu,
            progress=heartbeat,
            vision=vision,
        )
        send(_ready(config, started, memory, engine, cpus))
        return _serve(channel, engine, send, watch, grammar_compile_timeout=config.grammar_compile_timeout)
    except PeerGoneError:
        return p.WorkerExit.OK
    except ProtocolError as exc:
        print(f"mlxtrio worker: unreadable message from the server: {exc}", file=sys.stderr)
        return p.WorkerExit.PROTOCOL_ERROR
    except IPCError as exc:
        print(f"mlxtrio worker: channel broken: {exc}", file=sys.stderr)
        return p.WorkerExit.CHANNEL_BROKEN
    finally:
        if leader is not None:
            leader.close()
        channel.close()


def _ready(config: p.WorkerConfig, started: float, memory: int, engine, cpus: tuple[int, ...], *, ranks=(), embedding=None) -> p.Ready:  # noqa: ANN001
    """What the worker says once loaded: a group's rank 0 with every rank (``memory`` their sum), else itself;
    an embedding model (``embedding``, no engine) as one."""
    kind, tool_format = ("embed", None) if embedding is not None else (engine.kind, engine.tool_format)
    return p.Ready(
        config.model_id, time.monotonic() - started, memory, kind, tool_format, cpus,
        allocator_in_use(), blas_in_use(), scheduling_policy(), ranks=ranks,
        task="generate" if embedding is None else "embed", embedding=embedding,
    )  # fmt: skip


def _serve_group(channel, leader, ranks, config: p.WorkerConfig, send, watch, started: float) -> int:  # noqa: ANN001
    """Rank 0 of a group: Ready with every rank, then the loop; a planned end drains the group."""
    send(_ready(config, started, sum(rank.memory_bytes for rank in ranks), leader, (), ranks=ranks))
    try:
        status = _serve(channel, leader, send, watch, grammar_compile_timeout=config.grammar_compile_timeout)
    except OSError as exc:
        # A control link broke: a rank is gone.
        print(f"mlxtrio worker: a rank of the group is gone: {exc}", file=sys.stderr)
        return p.WorkerExit.GROUP_BROKEN
    except GroupBroken as exc:
        print(f"mlxtrio worker: a step failed ({exc}); the group stops", file=sys.stderr)
        return p.WorkerExit.GROUP_BROKEN
    if status == p.WorkerExit.OK:
        try:
            leader.stop()
        except (OSError, RuntimeError) as exc:
            # A rank already gone (its link closed, or the backend lost it): nothing is left to drain.
            print(f"mlxtrio worker: the group stopped without a last meeting: {exc}", file=sys.stderr)
    elif status == p.WorkerExit.GENERATION_BROKEN:
        return p.WorkerExit.GROUP_BROKEN
    return status


def _admit(engine, message: p.Generate, send, admitted: list[tuple[int, int]]) -> None:  # noqa: ANN001
    """Into the engine, its id and prompt tokens added to ``admitted``; or refused, its RequestFailed sent."""
    from ._failures import RequestError

    try:
        prompt_tokens = engine.admit(message)
    except RequestError as exc:
        send(p.RequestFailed(message.request_id, exc.kind, str(exc), exc.param, exc.code))
    except Exception as exc:  # noqa: BLE001 - one bad request must not take the others down
        send(p.RequestFailed(message.request_id, p.ErrorKind.INTERNAL, f"could not start generation: {type(exc).__name__}: {exc}"))
    else:
        admitted.append((message.request_id, prompt_tokens))


def _take(engine, message: p.Generate, send, admitted: list[tuple[int, int]], preparing: dict) -> None:  # noqa: ANN001
    """Admit ``message``, or first prepare its images off this thread (``_vision/_preparer.py``)."""
    if message.images and engine.images is not None:
        preparing[message.request_id] = (message, engine.images.submit(message))
    else:
        _admit(engine, message, send, admitted)


def _admit_prepared(engine, preparing: dict, send, admitted: list[tuple[int, int]]) -> None:  # noqa: ANN001
    """Admit the requests whose images are ready; refuse those whose images could not be."""
    from ._failures import RequestError

    for request_id, (message, future) in list(preparing.items()):
        if not future.done():
            continue
        del preparing[request_id]
        try:
            prepared = future.result()
        except RequestError as exc:
            send(p.RequestFailed(request_id, exc.kind, str(exc), exc.param, exc.code))
        except Exception as exc:  # noqa: BLE001 - that request's failure only
            send(p.RequestFailed(request_id, p.ErrorKind.INTERNAL, f"could not prepare the images: {type(exc).__name__}: {exc}"))
        else:
            engine.images.hold(message, prepared)
            try:
                _admit(engine, message, send, admitted)
            finally:
                # Its admission took them, unless it was refused before it came to its images.
                engine.images.release(message)


def _admit_compiled(engine, compiling: dict, send, admitted: list[tuple[int, int]], preparing: dict, *, timeout: float) -> None:  # noqa: ANN001
    """Admit the requests whose grammars have compiled (or prepare their images); refuse those that failed to, or ran past ``timeout``."""
    from ._grammar import GrammarError

    now = time.monotonic()
    for request_id, (message, future, submitted) in list(compiling.items()):
        grammar = message.params.grammar
        if future.done():
            del compiling[request_id]
            try:
                engine.grammars.keep(grammar, future.result())
            except GrammarError as exc:
                send(p.RequestFailed(request_id, p.ErrorKind.INVALID_REQUEST, str(exc), exc.param))
            except Exception as exc:  # noqa: BLE001 - that request's failure only
                send(p.RequestFailed(request_id, p.ErrorKind.INTERNAL, f"could not compile the grammar: {type(exc).__name__}: {exc}"))
            else:
                _take(engine, message, send, admitted, preparing)
        elif now - submitted >= timeout:
            # The compile goes on in its thread (llguidance's own limits bound it); the request is answered now.
            del compiling[request_id]
            message_text = (
                f"{grammar.param}: the schema did not compile within {timeout:g} s "
                "(MLX_GRAMMAR_COMPILE_TIMEOUT); simplify it"
            )
            send(p.RequestFailed(request_id, p.ErrorKind.INVALID_REQUEST, message_text, grammar.param, "grammar_timeout"))


def _serve(  # noqa: ANN001
    channel,
    engine,
    send,
    watch,
    *,
    follower_wait: float = FOLLOWER_WAIT,
    forming_limit: float = FORMING_LIMIT,
    grammar_compile_timeout: float,
) -> int:
    import mlx.core as mx

    decode = p.TO_WORKER.decode
    receive = channel.reader.receive
    # Only a batch gains by waiting: the sequential engine takes requests one after another anyway.
    batches = engine.kind == "batched"
    # Requests waiting for their grammars to compile, off this loop: request id -> (Generate, future, when submitted).
    compiling: dict[int, tuple[p.Generate, object, float]] = {}
    # Requests waiting for their images to be decoded and processed, off this loop: request id -> (Generate, future).
    preparing: dict[int, tuple[p.Generate, object]] = {}
    # Images prepared when the loop last looked: each one more is progress, told as a heartbeat when nothing else is.
    images_seen = 0
    while True:
        # Busy: take what is there and go on generating. Idle: wait for work (or for a grammar).
        idle = not engine.active
        if not idle:
            frame = receive(timeout=0)
        else:
            frame = receive(timeout=COMPILE_POLL if compiling or preparing else None, interrupt=watch)
        forming = idle and batches
        # Not read on the busy path, where a step follows every poll.
        forming_until = time.monotonic() + forming_limit if forming else 0.0
        followers = 0
        # Requests taken in by this turn of the loop: told to the orchestrator before the step runs.
        admitted: list[tuple[int, int]] = []
        while frame is not None:
            message = decode(frame)
            if isinstance(message, p.Generate):
                followers = message.followers
                grammar = message.params.grammar
                # A count needs no grammar: it generates nothing.
                if grammar is not None and not message.count_only and not engine.grammars.compiled(grammar):
                    compiling[message.request_id] = (message, engine.grammars.submit(grammar), time.monotonic())
                else:
                    _take(engine, message, send, admitted, preparing)
            elif isinstance(message, p.Cancel):
                if compiling.pop(message.request_id, None) is None and preparing.pop(message.request_id, None) is None:
                    engine.cancel(message.request_id)
            elif isinstance(message, p.Ping):
                send(p.Pong(message.nonce, engine.active, engine.prompt_cache_bytes, mx.get_active_memory()))
            elif isinstance(message, p.Embed):
                text = "this model generates text and does not embed; use an embedding model for /v1/embeddings"
                send(p.RequestFailed(message.request_id, p.ErrorKind.INVALID_REQUEST, text, "model", "model_not_embedding"))
            elif isinstance(message, p.Shutdown):
                engine.cancel_all()
                return p.WorkerExit.OK
            frame = receive(timeout=0)
            if frame is None and forming and followers > 0:
                wait = min(follower_wait, forming_until - time.monotonic())
                if wait > 0:
                    frame = receive(timeout=wait)
        if compiling:
            _admit_compiled(engine, compiling, send, admitted, preparing, timeout=grammar_compile_timeout)
        if preparing:
            _admit_prepared(engine, preparing, send, admitted)
            if engine.images.prepared != images_seen and not engine.active:
                send(p.Step(()))
            images_seen = engine.images.prepared
        if admitted:
            send(p.Admitted(*map(tuple, zip(*admitted))))
        if engine.active:
            watch()
            deltas, failures = engine.step()
            for request_id, error in failures:
                send(p.RequestFailed(request_id, error.kind, str(error), error.param, error.code))
            # An empty step is a heartbeat: a prefill chunk went by without output.
            send(p.Step(tuple(deltas)))
            # Finished sequences' caches, computed after their last tokens went out.
            engine.settle()
            if engine.broken:
                # Failures with no good step between: a fresh process is the cure.
                print("mlxtrio worker: generation keeps failing; exiting to be restarted", file=sys.stderr)
                return p.WorkerExit.GENERATION_BROKEN
