"""One model the server serves, across its worker processes' loads, crashes and restarts.

A thin coordinator of three parts: the model's state machine
(``_lifecycle.py``, no I/O), the current worker process (``_process.py``,
which reports what happens to it as events) and the requests open on it
(``_streams.py``). One long-lived task (``run``) spawns a process when a
request wants the model, feeds its events to the state machine and its
messages to the requests, stops it when the state machine says so, and
turns its death into an error on every open request at once.

HTTP handlers see ``generate()``, an async context manager yielding the
request's events (leaving it early tells the worker to drop the sequence),
and ``embed()``, an embedding request's vectors.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial

import attrs
import trio

from .. import _protocol as p
from .._config import Config
from .._errors import ErrorKind, ServerError
from ..ipc import IPCError
from ._catalog import ModelEntry, idle_timeout
from ._events import ProcessEvent, Started, StartFailed
from ._group import WorkerGroup, runs_here
from ._intake import Arrival
from ._lifecycle import Kill, ModelLifecycle, ModelState, ModelStatus, Stop
from ._process import WorkerProcess
from ._streams import PING_TIMEOUT, Events, RequestStreams

__all__ = ["ServedModel"]

log = logging.getLogger("mlxtrio.orchestrator")
# While a model loads, a line this often says it still is.
_LOADING_REPORT_INTERVAL = 10.0


@attrs.define(eq=False)
class _Attempt:
    """One load: everyone who asked for the model while it loads waits for the same one."""

    done: trio.Event = attrs.Factory(trio.Event)
    error: ServerError | None = None

    def finish(self, error: ServerError | None = None) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


@attrs.define(eq=False)
class _Run:
    """One process's life: the process, the requests open on it, and the load it was started for."""

    process: WorkerProcess | WorkerGroup
    streams: RequestStreams
    attempt: _Attempt


class ServedModel:
    """One model the server serves: what the HTTP side loads, asks to generate, pings and unloads."""

    def __init__(
        self,
        entry: ModelEntry,
        worker_config: p.WorkerConfig,
        *,
        config: Config,
        admit_load: Callable[[ServedModel], Awaitable[None]],
    ) -> None:
        self.model_id = entry.id
        self._worker_config = worker_config
        self._config = config
        # Called before each load: the supervisor makes room (evicts) or refuses, then begin_load().
        self._admit_load = admit_load
        # Bytes of weights, when the files can be measured before loading (0: unknown).
        self.estimated_bytes = entry.weights_bytes
        group = worker_config.group
        if group is not None:
            # A group's ranks on other hosts hold their shares there: this machine's budget counts its own ranks'.
            self.estimated_bytes = entry.weights_bytes * sum(map(runs_here, group.hosts)) // len(group.hosts)
        # Whether it takes images (None: not known until it is downloaded): a request with images to a text
        # model is refused without loading it.
        self.takes_images = entry.takes_images
        # A worker group mlx-lm cannot run (its mode, a vision model): refused before any rank starts.
        self._group_refusal = entry.group_refusal
        # The interpreter of a worker group's ranks on other hosts.
        self._group_python = entry.settings.python if entry.settings is not None else None
        self._lifecycle = ModelLifecycle(
            model_id=entry.id,
            decode_concurrency=worker_config.decode_concurrency,
            idle_timeout=idle_timeout(config, entry),
            max_queue=config.max_queue,
            hang_timeout=config.hang_timeout,
            last_used=trio.current_time(),
            task=worker_config.task,
        )
        self._run: _Run | None = None
        self._attempt: _Attempt | None = None
        self._wake = trio.Event()
        self._run_ended = trio.Event()
        self._changed = trio.Event()  # activity changed: the monitor recomputes its deadlines
        # Wall-clock time minus trio's, read once: the status's times (trio's clock inside) read back
        # the same at every call, and the status snapshot is rewritten only when something changed.
        self._wall_offset = time.time() - trio.current_time()

    # --- for the HTTP side -----------------------------------------------------

    async def ensure_ready(self) -> None:
        """Start the worker if needed and wait for it; raise ServerError if it cannot load."""
        lifecycle = self._lifecycle
        if self._group_refusal is not None:
            raise ServerError(
                ErrorKind.INVALID_REQUEST, f"model {self.model_id!r}: {self._group_refusal}", code="group_unsupported", param="model"
            )
        while True:
            if self._run is not None:
                if lifecycle.stop_reason is None and lifecycle.state is ModelState.READY:
                    return
                if lifecycle.stop_reason is not None:
                    # Stopping (idle, unload): wait for it to be gone, then load afresh.
                    await self._run_ended.wait()
                    continue
            refusal = lifecycle.refusal(now=trio.current_time())
            if refusal is not None:
                raise refusal
            if self._attempt is None:
                await self._admit_load(self)
                if self._attempt is None:
                    continue
            attempt = self._attempt
            await attempt.done.wait()
            if attempt.error is not None:
                raise attempt.error

    def begin_load(self) -> None:
        """Start loading (if nobody has): the run task spawns the process."""
        if self._attempt is None and self._run is None:
            self._attempt = _Attempt()
            self._lifecycle.request_load()
            self._wake.set()

    @property
    def resident(self) -> bool:
        """Loading or loaded: it holds (or is about to hold) memory."""
        return self._attempt is not None or self._run is not None

    @property
    def idle(self) -> bool:
        """Loaded, serving nothing, and not already stopping: free to evict."""
        return self._run is not None and self._lifecycle.idle

    @property
    def resident_bytes(self) -> int:
        ready = self._lifecycle.ready
        if ready is None:
            return self.estimated_bytes
        here = sum(rank.memory_bytes for rank in ready.ranks if runs_here(rank.host)) if ready.ranks else ready.memory_bytes
        return max(self.estimated_bytes, here)

    @property
    def tool_format(self) -> str | None:
        """The loaded model's tool-call format (None: none, or not loaded)."""
        ready = self._lifecycle.ready
        return ready.tool_format if ready is not None else None

    @property
    def last_used(self) -> float:
        return self._lifecycle.last_used

    def check_capacity(self, sequences: int = 1) -> None:
        """Admission control: a bounded queue in front of the worker, then overloaded."""
        self._lifecycle.check_capacity(sequences)

    def check_task(self, task: str) -> None:
        """Refuse a request of ``task`` ("generate", "embed") the model does not serve, as far as is known yet."""
        self._lifecycle.check_task(task)

    @contextlib.asynccontextmanager
    async def generate(
        self,
        params: p.SamplingParams,
        *,
        messages: tuple[p.ChatMessage, ...] | None = None,
        prompt: str | None = None,
        prompts: tuple[str | tuple[int, ...], ...] = (),
        n: int = 1,
        keep_alive: float | None = None,
        tools: str | None = None,
        parse_tool_calls: bool = False,
        max_tool_calls: int = 0,
        thinking: bool | None = None,
        count_only: bool = False,
        split_reasoning: bool = True,
        images: tuple[p.ImageInput, ...] = (),
        arrival: Arrival | None = None,
    ) -> AsyncIterator[Events]:
        """Start ``n`` sequences (choices) of one prompt, or split evenly among ``prompts``; their deltas arrive through one Events.

        With a seed, choice ``i`` samples with ``seed + i`` (the worker sees to
        it): choices differ, and the same request gives the same choices again.
        ``keep_alive`` (seconds; negative: forever; None: the idle timeout)
        replaces the model's, as in Ollama.
        ``thinking``: the chat template's thinking switch (None: its default). ``count_only``: the worker
        counts the prompt's tokens and generates nothing (one last Delta, finish_reason "counted").
        ``split_reasoning``: the model's thinking goes in ``Delta.reasoning``, not in the text.
        ``images``: those the messages' parts name, checked by the API layer (api/_images.py).
        ``arrival``: the request's place in the server's intake, handed over as
        its Generate goes out (its ``followers``: see _intake.py).
        """
        async with self._request("generate", n, keep_alive) as (run, events):
            # Requests still arriving that may be for this model: the worker may wait for them.
            expected = arrival.hand_over() if arrival is not None else 0
            # One Generate for all the choices: the prompt crosses once and is tokenized once.
            generate = p.Generate(
                events.first_id, params, messages, prompt, tools, parse_tool_calls, max_tool_calls, expected, n, prompts,
                thinking=thinking, count_only=count_only, split_reasoning=split_reasoning, images=images,
            )
            await self._send(run, generate)
            yield events

    async def embed(
        self, inputs: tuple[str | tuple[int, ...], ...], *, dimensions: int | None = None, truncate: bool = False,
        param: str = "input", keep_alive: float | None = None,
    ) -> p.Embedded:
        """Every input's vector (one request in the model's queue, however many inputs); ServerError if the worker
        refuses them. Cancelled, the worker drops what is left. ``param``: the inputs' field, for errors."""
        async with self._request("embed", 1, keep_alive) as (run, events):
            await self._send(run, p.Embed(events.first_id, inputs, dimensions, truncate, param))
            return await events.embedded()

    @contextlib.asynccontextmanager
    async def _request(self, task: str, sequences: int, keep_alive: float | None) -> AsyncIterator[tuple[_Run, Events]]:
        """A request of ``sequences`` in the queue of the loaded model; on the way out, the worker drops what is unfinished."""
        lifecycle = self._lifecycle
        lifecycle.check_task(task)  # as configured
        lifecycle.check_capacity(sequences)
        await self.ensure_ready()
        lifecycle.check_task(task)  # as the worker found it
        lifecycle.check_capacity(sequences)  # again: others may have come in while it loaded
        # Only a request taken in decides how long the model stays (Ollama's keep_alive): a refused one does not.
        lifecycle.keep_alive = keep_alive
        run = self._run
        assert run is not None
        with run.streams.open(sequences) as events:
            lifecycle.began(sequences, now=trio.current_time())
            self._changed.set()
            try:
                yield run, events
            finally:
                lifecycle.ended(sequences, now=trio.current_time())
                self._changed.set()
                if not events.finished:
                    # The client left, timed out, or one choice failed: free the worker's slots now.
                    with trio.CancelScope(shield=True), trio.move_on_after(1):
                        with contextlib.suppress(IPCError):
                            for request_id in events.unfinished():
                                await run.process.send(p.Cancel(request_id))

    @staticmethod
    async def _send(run: _Run, message: p.ToWorker) -> None:
        try:
            await run.process.send(message)
        except IPCError as exc:
            raise ServerError(ErrorKind.UNAVAILABLE, f"the model worker is unavailable: {exc}", code="worker_unavailable") from exc

    def hold(self, keep_alive: float | None) -> None:
        """Ollama's keep_alive without a generation (a request that only loads the model): it replaces the model's from now."""
        self._lifecycle.keep_alive = keep_alive
        self._lifecycle.last_used = trio.current_time()
        self._changed.set()

    def expires_at(self) -> float | None:
        """The wall-clock time the model unloads if no request comes (None: never)."""
        deadline = self._lifecycle.unload_deadline(now=trio.current_time())
        return None if deadline == math.inf else deadline + self._wall_offset

    async def ping(self) -> tuple[float, p.Pong]:
        """Round trip through the worker: (seconds, its answer). Raises ServerError if not loaded."""
        run = self._run
        if run is None or self._lifecycle.state is not ModelState.READY:
            raise ServerError(ErrorKind.UNAVAILABLE, f"model {self.model_id!r} is not loaded", code="worker_unavailable")
        started = trio.current_time()
        try:
            pong = await run.streams.ping(run.process.send)
        except IPCError as exc:
            raise ServerError(ErrorKind.UNAVAILABLE, f"the model worker is unavailable: {exc}", code="worker_unavailable") from exc
        if pong is None:
            if run.streams.closed:
                raise ServerError(ErrorKind.UNAVAILABLE, "the model worker stopped before answering", code="worker_unavailable")
            raise ServerError(
                ErrorKind.TIMEOUT, f"the model worker did not answer a ping within {PING_TIMEOUT:g} s", code="worker_timeout"
            )
        return trio.current_time() - started, pong

    async def unload(self, reason: str = "unloaded on request") -> None:
        """Stop the worker (if any) and wait until it is gone. In-flight requests fail as unavailable."""
        self._lifecycle.request_unload(reason)
        if self._run is not None:
            self._changed.set()
            await self._run_ended.wait()

    async def wait_stopped(self) -> None:
        """Return once the current worker process (if any) is gone and cleaned up."""
        if self._run is not None:
            await self._run_ended.wait()

    def statistics(self) -> ModelStatus:
        status = self._lifecycle.statistics(now=trio.current_time(), wall_offset=self._wall_offset)
        run = self._run
        if run is None:
            return status
        ranks = self._lifecycle.rank_statuses(run.process.ranks() if isinstance(run.process, WorkerGroup) else ())
        return attrs.evolve(status, channel=run.process.statistics(), routes=run.streams.statistics(), ranks=ranks)

    # --- the worker's life ------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The lifetime task: one process after another, as long as the supervisor runs."""
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                attempt = self._attempt
                if attempt is None:
                    continue
                self._run_ended = trio.Event()
                try:
                    await self._run_process(attempt)
                finally:
                    self._attempt = None
                    self._run_ended.set()
        finally:
            if self._attempt is not None:
                self._attempt.finish(ServerError(ErrorKind.UNAVAILABLE, "the server is shutting down", code="shutting_down"))

    def _handle(self, event: ProcessEvent) -> None:
        """An event to the state machine; a load it settles releases everyone waiting for it."""
        lifecycle = self._lifecycle
        lifecycle.handle(event, now=trio.current_time())
        attempt = self._attempt
        if attempt is not None and not attempt.done.is_set() and not lifecycle.loading:
            failure = lifecycle.failure
            if failure is not None:
                # Each failure's message names the model (and where from, as the worker tells it).
                log.warning("%s (next attempt in %g s at the earliest)", failure.message, failure.retry_after)
            attempt.finish(failure)

    async def _run_process(self, attempt: _Attempt) -> None:
        config = self._config
        # This process's environment as it is now, with the worker's malloc preloaded.
        environment = config.worker_allocator.environment(os.environ)
        try:
            if self._worker_config.group is None:
                process: WorkerProcess | WorkerGroup = await WorkerProcess.spawn(
                    self._worker_config, environment=environment, send_timeout=config.hang_timeout
                )
            else:
                assert self._group_python is not None
                process = await WorkerGroup.spawn(
                    self._worker_config, environment=environment, send_timeout=config.hang_timeout,
                    base_port=config.group_port, ssh=config.group_ssh, python=self._group_python,
                )
        except OSError as exc:
            self._handle(StartFailed(f"could not start a worker for model {self.model_id!r}: {exc}"))
            return
        run = _Run(process, RequestStreams(), attempt)
        self._run = run
        self._handle(Started(process.pid))
        log.info("loading model %r (worker pid %d)", self.model_id, process.pid)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._monitor, run)
                nursery.start_soon(self._report_loading, run)
                await process.serve(partial(self._received, run))
                nursery.cancel_scope.cancel()
        finally:
            # Cancelled with the worker still running: only the server's end does that, a stop
            # asked for (a second Ctrl-C, the stop's time limit), not a crash to warn about.
            if trio.current_effective_deadline() == -math.inf and process.running:
                self._lifecycle.begin_stop("the server is stopping now")
                log.info("model %r: worker pid %d stopped at once: the server is stopping now", self.model_id, process.pid)
            with trio.CancelScope(shield=True):
                await self._clean_up(run)

    def _received(self, run: _Run, message: p.ToOrchestrator) -> None:
        self._handle(message)
        if isinstance(message, p.Ready):
            log.info(
                "model %r ready in %.1f s (worker pid %d, %s engine, %.1f MiB, %s, %s scheduling, %s malloc, %s BLAS)",
                self.model_id, message.load_seconds, run.process.pid, message.engine, message.memory_bytes / 2**20,
                f"pinned to CPU {','.join(map(str, message.cpus))}" if message.cpus else "not pinned",
                message.scheduling,
                message.allocator,
                message.blas,
            )
            for rank in message.ranks:
                log.info(
                    "model %r: rank %d on %s (pid %d): %s, %.1f MiB",
                    self.model_id, rank.rank, rank.host, rank.pid, rank.shard, rank.memory_bytes / 2**20,
                )
        else:
            run.streams.deliver(message)

    async def _report_loading(self, run: _Run) -> None:
        started = trio.current_time()
        while True:
            await trio.sleep(_LOADING_REPORT_INTERVAL)
            if run.attempt.done.is_set():
                return
            log.info("still loading model %r (%.0f s so far)", self.model_id, trio.current_time() - started)

    async def _monitor(self, run: _Run) -> None:
        """Carries out the state machine's decisions as they fall due."""
        while True:
            self._changed = trio.Event()
            decision = self._lifecycle.decide(now=trio.current_time())
            if isinstance(decision, Stop):
                self._lifecycle.begin_stop(decision.reason)
                log.info("unloading model %r: %s", self.model_id, decision.reason)
                await run.process.stop()
                return
            if isinstance(decision, Kill):
                run.process.kill(decision.cause, decision.reason)
                return
            with trio.move_on_at(decision.until):
                await self._changed.wait()

    async def _clean_up(self, run: _Run) -> None:
        exited = await run.process.reap()
        error = self._lifecycle.exit_error(exited)
        if self._lifecycle.stop_reason is None:
            log.warning("model %r: %s (worker pid %d)", self.model_id, exited.reason, exited.pid)
        run.streams.close(error)
        await run.process.close(error.message)
        self._run = None
        self._handle(exited)
