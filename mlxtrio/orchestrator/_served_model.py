"""One model's worker process, across its loads, crashes and restarts.

Lifecycle: ``unloaded → loading → ready → unloaded``, or ``failed`` (with a
back-off) when a load fails. One long-lived task (``run``) owns the process:
it spawns it when a request wants the model, reads and routes its messages,
stops it when idle or told to, kills it when it hangs, and turns its death
into an error on every open request at once.

HTTP handlers see only ``generate()``: an async context manager yielding the
request's events; leaving it early tells the worker to drop the sequence.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import attrs
import msgspec
import trio

from .. import _protocol as p
from ..tuning import parse_worker_allocator
from .._config import Config
from .._errors import ErrorKind, ServerError
from ..ipc import Channel, IPCError, MessageRouter, PeerGoneError, ProtocolError, TrioChannel
from ._catalog import ModelEntry, decode_concurrency, idle_timeout
from ._intake import Arrival

__all__ = ["Events", "ModelWorker", "WorkerState", "WorkerStatus"]

log = logging.getLogger("mlxtrio.orchestrator")
# What the worker writes to stderr (warnings, tracebacks) goes to this logger, line by line.
worker_log = logging.getLogger("mlxtrio.worker")
# While a model loads, a line this often says it still is.
_LOADING_REPORT_INTERVAL = 10.0

# Graceful stop: how long the worker may take to exit after Shutdown.
_EXIT_WAIT = 5.0
# Back-off after failed loads: 1 s, 2 s, 4 s ... capped.
_BACKOFF_BASE = 1.0
_BACKOFF_CAP = 60.0
_LOAD_FAILURE_KINDS = {"not_found": ErrorKind.NOT_FOUND, "too_large": ErrorKind.OUT_OF_MEMORY, "invalid": ErrorKind.INVALID_REQUEST}
# A request the worker failed: OpenAI's error code for its kind, where the worker gave none.
_FAILURE_CODES = {
    ErrorKind.INVALID_REQUEST: "invalid_request",
    ErrorKind.INTERNAL: "generation_failed",
    ErrorKind.OUT_OF_MEMORY: "out_of_memory",
}
# The worker's exits that say why it stopped.
_EXIT_REASONS = {
    p.WorkerExit.CHANNEL_BROKEN: ("protocol", "the model worker lost its channel to the server"),
    p.WorkerExit.GENERATION_BROKEN: ("generation", "the model worker exited after repeated generation failures; it will be restarted"),
    p.WorkerExit.PROTOCOL_ERROR: ("protocol", "the model worker received a message it could not read, and exited"),
}


def _exit_reason(returncode: int) -> tuple[str, str]:
    """(cause, reason) for a worker's unexpected exit."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return "crash", f"the model worker was killed by {name}"
    return _EXIT_REASONS.get(returncode, ("crash", f"the model worker exited unexpectedly (status {returncode})"))


class WorkerState(str, enum.Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@attrs.frozen
class WorkerStatus:
    model: str
    pid: int | None
    state: str
    restarts: int
    # Worker processes started for this model so far.
    loads: int
    loaded_at: float | None
    last_used_at: float | None
    memory_bytes: int | None
    # "batched" or "sequential" while loaded.
    engine: str | None
    # Requests in flight: decoding (at most the decode concurrency) and waiting beyond it.
    active_requests: int
    queued_requests: int
    failure: str | None
    retry_at: float | None
    # Unexpected exits by cause (crash, hang, protocol, generation), and the last one's reason.
    restart_causes: dict[str, int] = attrs.field(factory=dict)
    last_crash: str | None = None
    # How long the latest successful load took.
    load_seconds: float | None = None
    # The CPUs the loaded worker is pinned to (MLX_WORKER_CPUS); empty: not pinned.
    cpus: tuple[int, ...] = ()
    # The malloc the loaded worker runs with (MLX_WORKER_ALLOCATOR), as it reports it.
    allocator: str | None = None
    # The BLAS the loaded worker's MLX runs with (MLX_WORKER_BLAS), as it reports it.
    blas: str | None = None
    # The scheduling policy of the loaded worker's threads, as it reports it ("batch" when pinned to one core).
    scheduling: str | None = None


@attrs.define(eq=False)
class _Attempt:
    """One load: everyone who asked for the model while it loads waits for the same one."""

    done: trio.Event = attrs.Factory(trio.Event)
    error: ServerError | None = None

    def finish(self, error: ServerError | None = None) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


@attrs.frozen
class _WorkerGone:
    """The last thing an open request receives when its worker dies."""

    error: ServerError


@attrs.define(eq=False)
class _Run:
    """State of one process's life."""

    channel: TrioChannel
    router: MessageRouter
    process: trio.Process
    attempt: _Attempt
    # The worker's Ready message, once it has loaded.
    ready: p.Ready | None = None
    # Why we stopped it, if we did (then its exit is no crash).
    stop_reason: str | None = None
    # Set when the orchestrator kills it for cause ("hang", "protocol").
    crash_cause: str | None = None
    crash_reason: str | None = None


class Events:
    """A request's Deltas, from all its choices; raises ServerError if it fails or the worker dies."""

    def __init__(self, route: trio.MemoryReceiveChannel, request_ids: Sequence[int]) -> None:
        self._route = route
        self._choice_of = {request_id: index for index, request_id in enumerate(request_ids)}
        self._unfinished = set(request_ids)

    @property
    def finished(self) -> bool:
        return not self._unfinished

    def unfinished(self) -> list[int]:
        return sorted(self._unfinished)

    def choice(self, delta: p.Delta) -> int:
        """The choice index (0 .. n-1) a delta belongs to."""
        return self._choice_of[delta.request_id]

    def __aiter__(self) -> Events:
        return self

    async def __anext__(self) -> p.Delta:
        if self.finished:
            raise StopAsyncIteration
        try:
            message = await self._route.receive()
        except trio.EndOfChannel:
            self._unfinished.clear()
            raise ServerError(ErrorKind.UNAVAILABLE, "the model worker stopped", code="worker_unavailable") from None
        if isinstance(message, _WorkerGone):
            self._unfinished.clear()
            raise message.error
        if isinstance(message, p.RequestFailed):
            # One failed choice fails the request; the others are cancelled on the way out.
            self._unfinished.discard(message.request_id)
            raise ServerError(
                message.kind, message.message, code=message.code or _FAILURE_CODES.get(message.kind), param=message.param
            )
        if message.finish_reason is not None:
            self._unfinished.discard(message.request_id)
            if message.error is not None:
                raise ServerError(ErrorKind.INVALID_REQUEST, message.error, code="grammar_failed", param=message.error_param)
        return message


async def _load_without_limits(worker: ModelWorker) -> None:
    worker.begin_load()


class ModelWorker:
    def __init__(
        self,
        entry: ModelEntry,
        worker_config: p.WorkerConfig,
        *,
        config: Config,
        admit_load: Callable[[ModelWorker], Awaitable[None]] = _load_without_limits,
    ) -> None:
        self.model_id = entry.id
        self._worker_config = worker_config
        self._config = config
        self._allocator = parse_worker_allocator(config.worker_allocator)
        # Per-model settings (the config file's) over the server's.
        self._idle_timeout = idle_timeout(config, entry)
        self._decode_concurrency = decode_concurrency(config, entry)
        # Called before each load: the supervisor makes room (evicts) or refuses, then begin_load().
        self._admit_load = admit_load
        # Bytes of weights, when the files can be measured before loading (0: unknown).
        self.estimated_bytes = entry.weights_bytes
        # Ollama's keep_alive of the latest request: seconds idle before unloading (None: the default).
        self._keep_alive: float | None = None
        self._unload_reason = "unloaded on request"
        self._state = WorkerState.UNLOADED
        self._run: _Run | None = None
        self._attempt: _Attempt | None = None
        self._wake = trio.Event()
        self._run_ended = trio.Event()
        self._changed = trio.Event()  # activity changed: the monitor recomputes its deadlines
        self._ids = itertools.count(1)
        self._nonces = itertools.count(1)
        self._pings: dict[int, tuple[trio.Event, list]] = {}
        self._active = 0
        self._restarts = 0
        self._restart_causes: dict[str, int] = {}
        self._last_crash: str | None = None
        self._load_seconds: float | None = None
        self._loads = 0
        self._failures = 0
        self._failure: ServerError | None = None
        self._retry_at: float | None = None  # trio clock
        self._loaded_at: float | None = None  # wall clock, for people
        self._last_used_at: float | None = None
        self._last_used = trio.current_time()
        self._last_progress = trio.current_time()
        self._unload_requested = False

    # --- for the HTTP side -----------------------------------------------------

    async def ensure_ready(self) -> None:
        """Start the worker if needed and wait for it; raise ServerError if it cannot load."""
        while True:
            if self._state is WorkerState.READY and self._run is not None and self._run.stop_reason is None:
                return
            if self._run is not None and self._run.stop_reason is not None:
                # Stopping (idle, unload): wait for it to be gone, then load afresh.
                await self._run_ended.wait()
                continue
            if self._state is WorkerState.FAILED and self._retry_at is not None:
                wait = self._retry_at - trio.current_time()
                if wait > 0:
                    assert self._failure is not None
                    raise ServerError(
                        self._failure.kind,
                        f"{self._failure.message} (next attempt in {wait:.1f} s)",
                        code=self._failure.code,
                        retry_after=wait,
                    )
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
            self._unload_requested = False
            self._unload_reason = "unloaded on request"
            self._wake.set()

    @property
    def resident(self) -> bool:
        """Loading or loaded: it holds (or is about to hold) memory."""
        return self._attempt is not None or self._run is not None

    @property
    def idle(self) -> bool:
        """Loaded, serving nothing, and not already stopping: free to evict."""
        run = self._run
        return self._state is WorkerState.READY and self._active == 0 and run is not None and run.stop_reason is None

    @property
    def resident_bytes(self) -> int:
        run = self._run
        measured = run.ready.memory_bytes if run is not None and run.ready is not None else 0
        return max(self.estimated_bytes, measured)

    @property
    def tool_format(self) -> str | None:
        """The loaded model's tool-call format (None: none, or not loaded)."""
        run = self._run
        return run.ready.tool_format if run is not None and run.ready is not None else None

    @property
    def last_used(self) -> float:
        return self._last_used

    def check_capacity(self, sequences: int = 1) -> None:
        """Admission control: a bounded queue in front of the worker, then 429."""
        limit = self._decode_concurrency + self._config.max_queue
        if self._active + sequences > limit:
            raise ServerError(
                ErrorKind.OVERLOADED,
                f"model {self.model_id!r} is at capacity ({self._decode_concurrency} decoding, "
                f"{self._config.max_queue} waiting); retry shortly",
                code="queue_full",
                retry_after=1.0,
            )

    @contextlib.asynccontextmanager
    async def generate(
        self,
        params: p.SamplingParams,
        *,
        messages: tuple[p.ChatMessage, ...] | None = None,
        prompt: str | None = None,
        n: int = 1,
        keep_alive: float | None = None,
        tools: str | None = None,
        parse_tool_calls: bool = False,
        max_tool_calls: int = 0,
        arrival: Arrival | None = None,
    ) -> AsyncIterator[Events]:
        """Start ``n`` sequences (choices) of one prompt; their deltas arrive through one Events.

        With a seed, choice ``i`` samples with ``seed + i`` (the worker sees to
        it): choices differ, and the same request gives the same choices again.
        ``keep_alive`` (seconds; negative: forever; None: the idle timeout)
        replaces the model's, as in Ollama.
        ``arrival``: the request's place in the server's intake, handed over as
        its Generate goes out (its ``followers``: see _intake.py).
        """
        self._keep_alive = keep_alive
        self.check_capacity(n)
        await self.ensure_ready()
        self.check_capacity(n)  # again: others may have come in while it loaded
        run = self._run
        assert run is not None
        # Consecutive: the worker numbers the choices from the first (Generate.choices).
        first = next(self._ids)
        request_ids = range(first, first + n)
        self._ids = itertools.count(first + n)
        with run.router.open_routes(request_ids) as route:
            self._active += n
            if self._active == n:
                self._last_progress = trio.current_time()
            self._changed.set()
            events = Events(route, request_ids)
            try:
                try:
                    # Requests still arriving that may be for this model: the worker may wait for them.
                    expected = arrival.hand_over() if arrival is not None else 0
                    # One Generate for all the choices: the prompt crosses once and is tokenized once.
                    await run.channel.send(
                        p.TO_WORKER.encode(
                            p.Generate(first, params, messages, prompt, tools, parse_tool_calls, max_tool_calls, expected, n)
                        )
                    )
                except IPCError as exc:
                    raise ServerError(ErrorKind.UNAVAILABLE, f"the model worker is unavailable: {exc}", code="worker_unavailable") from exc
                yield events
            finally:
                self._active -= n
                self._last_used = trio.current_time()
                self._last_used_at = time.time()
                self._changed.set()
                if not events.finished:
                    # The client left, timed out, or one choice failed: free the worker's slots now.
                    with trio.CancelScope(shield=True), trio.move_on_after(1):
                        with contextlib.suppress(IPCError):
                            for request_id in events.unfinished():
                                await run.channel.send(p.TO_WORKER.encode(p.Cancel(request_id)))

    async def ping(self) -> tuple[float, p.Pong]:
        """Round trip through the worker: (seconds, its answer). Raises ServerError if not loaded."""
        run = self._run
        if run is None or self._state is not WorkerState.READY:
            raise ServerError(ErrorKind.UNAVAILABLE, f"model {self.model_id!r} is not loaded", code="worker_unavailable")
        nonce = next(self._nonces)
        done, result = trio.Event(), []
        self._pings[nonce] = (done, result)
        started = trio.current_time()
        try:
            await run.channel.send(p.TO_WORKER.encode(p.Ping(nonce)))
            with trio.move_on_after(5):
                await done.wait()
        except IPCError as exc:
            raise ServerError(ErrorKind.UNAVAILABLE, f"the model worker is unavailable: {exc}", code="worker_unavailable") from exc
        finally:
            self._pings.pop(nonce, None)
        if not result:
            if self._run is not run:
                raise ServerError(ErrorKind.UNAVAILABLE, "the model worker stopped before answering", code="worker_unavailable")
            raise ServerError(ErrorKind.TIMEOUT, "the model worker did not answer a ping within 5 s", code="worker_timeout")
        return trio.current_time() - started, result[0]

    async def unload(self, reason: str = "unloaded on request") -> None:
        """Stop the worker (if any) and wait until it is gone. In-flight requests get a 503."""
        self._unload_reason = reason
        self._unload_requested = True
        run = self._run
        if run is not None:
            self._changed.set()
            await self._run_ended.wait()

    async def wait_stopped(self) -> None:
        """Return once the current worker process (if any) is gone and cleaned up."""
        if self._run is not None:
            await self._run_ended.wait()

    def statistics(self) -> WorkerStatus:
        run = self._run
        ready = run.ready if run is not None else None
        return WorkerStatus(
            model=self.model_id,
            pid=run.process.pid if run is not None else None,
            state=self._state.value,
            restarts=self._restarts,
            loads=self._loads,
            loaded_at=self._loaded_at,
            last_used_at=self._last_used_at,
            memory_bytes=ready.memory_bytes if ready is not None else None,
            engine=ready.engine if ready is not None else None,
            active_requests=self._active,
            queued_requests=max(0, self._active - self._decode_concurrency),
            failure=self._failure.message if self._failure is not None else None,
            retry_at=None if self._retry_at is None else time.time() + max(0.0, self._retry_at - trio.current_time()),
            restart_causes=dict(self._restart_causes),
            last_crash=self._last_crash,
            load_seconds=self._load_seconds,
            cpus=ready.cpus if ready is not None else (),
            allocator=ready.allocator if ready is not None else None,
            blas=ready.blas if ready is not None else None,
            scheduling=ready.scheduling if ready is not None else None,
        )

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

    async def _run_process(self, attempt: _Attempt) -> None:
        channel = Channel.create()
        trio_channel = TrioChannel(channel, send_timeout=self._config.hang_timeout)
        command = [
            sys.executable,
            "-m",
            "mlxtrio.worker",
            msgspec.json.encode(self._worker_config).decode(),
            channel.spec.to_json(),
        ]
        try:
            # Its own session: a terminal's Ctrl-C reaches the orchestrator, which decides.
            process = await trio.lowlevel.open_process(
                command,
                pass_fds=channel.pass_fds,
                start_new_session=True,
                stderr=subprocess.PIPE,
                # This process's environment as it is now, with the worker's malloc preloaded.
                env=self._allocator.environment(os.environ),
            )
        except OSError as exc:
            with trio.CancelScope(shield=True):
                await trio_channel.aclose()
            self._load_failed(attempt, ServerError(ErrorKind.UNAVAILABLE, f"could not start a worker: {exc}", code="worker_unavailable"))
            return
        finally:
            channel.close_worker_fds()
        self._loads += 1
        run = _Run(trio_channel, MessageRouter(key=lambda message: message.request_id), process, attempt)
        self._run = run
        self._state = WorkerState.LOADING
        log.info("loading model %r (worker pid %d)", self.model_id, process.pid)
        try:
            async with trio.open_nursery() as nursery:
                relayed = trio.Event()
                nursery.start_soon(self._read, run)
                nursery.start_soon(self._monitor, run)
                nursery.start_soon(self._relay_stderr, run, relayed)
                nursery.start_soon(self._report_loading, run)
                await process.wait()
                # Its last words (a traceback, say) are in the pipe: read them out, briefly.
                with trio.move_on_after(1):
                    await relayed.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._clean_up(run)

    async def _relay_stderr(self, run: _Run, done: trio.Event) -> None:
        """The worker's stderr into the server's log, a line at a time, with its pid."""
        stream, pid, pending = run.process.stderr, run.process.pid, b""
        assert stream is not None
        try:
            while chunk := await stream.receive_some(65536):
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    if line.strip():
                        worker_log.warning("worker %d (%s): %s", pid, self.model_id, line.decode(errors="replace").rstrip())
            if pending.strip():
                worker_log.warning("worker %d (%s): %s", pid, self.model_id, pending.decode(errors="replace").rstrip())
        except trio.ClosedResourceError:
            pass
        finally:
            done.set()

    async def _report_loading(self, run: _Run) -> None:
        started = trio.current_time()
        while True:
            await trio.sleep(_LOADING_REPORT_INTERVAL)
            if run.ready is not None or run.attempt.done.is_set():
                return
            log.info("still loading model %r (%.0f s so far)", self.model_id, trio.current_time() - started)

    async def _clean_up(self, run: _Run) -> None:
        process = run.process
        if process.returncode is None:
            process.kill()
        await process.wait()
        if process.stderr is not None:
            await process.stderr.aclose()
        if run.stop_reason is not None:
            error = ServerError(ErrorKind.UNAVAILABLE, f"the model was unloaded ({run.stop_reason})", code="model_unloaded")
        else:
            cause, reason = _exit_reason(process.returncode)
            if run.crash_cause is not None:
                cause, reason = run.crash_cause, run.crash_reason or reason
            error = ServerError(ErrorKind.UNAVAILABLE, reason, code="worker_crashed")
            self._restart_causes[cause] = self._restart_causes.get(cause, 0) + 1
            self._last_crash = reason
            log.warning("model %r: %s (worker pid %d)", self.model_id, reason, process.pid)
        run.channel.stop(PeerGoneError(error.message))
        run.router.close_all(lambda request_id: _WorkerGone(error))
        for done, _ in self._pings.values():
            done.set()
        await run.channel.aclose()
        self._run = None
        if not run.attempt.done.is_set():
            # Died or was stopped while loading. Once may be bad luck (the
            # kernel's OOM killer, an operator): try again at once. Again is a
            # crash loop: back off.
            self._load_failed(
                run.attempt,
                ServerError(ErrorKind.UNAVAILABLE, f"the model worker died while loading {self.model_id!r}: {error.message}", code="load_failed"),
                retry_at_once=run.stop_reason is None and self._failures == 0,
            )
        elif self._state is not WorkerState.FAILED:
            if run.stop_reason is None:
                self._restarts += 1
            self._state = WorkerState.UNLOADED

    def _load_failed(self, attempt: _Attempt, error: ServerError, *, retry_at_once: bool = False) -> None:
        self._failures += 1
        self._failure = error
        self._state = WorkerState.FAILED
        wait = 0.0 if retry_at_once else min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** (self._failures - 1))
        self._retry_at = trio.current_time() + wait
        attempt.finish(error)

    async def _read(self, run: _Run) -> None:
        decode = p.TO_ORCHESTRATOR.decode
        try:
            while True:
                message = decode(await run.channel.receive())
                self._last_progress = trio.current_time()
                if isinstance(message, p.Step):
                    for delta in message.deltas:
                        run.router.route(delta)
                elif isinstance(message, p.RequestFailed):
                    run.router.route(message)
                elif isinstance(message, p.Hello):
                    # Both sides are attached: nothing needs a name in /dev/shm any more.
                    run.channel.channel.unlink()
                elif isinstance(message, p.Ready):
                    self._state = WorkerState.READY
                    self._failures = 0
                    self._failure = None
                    self._retry_at = None
                    self._loaded_at = time.time()
                    self._load_seconds = message.load_seconds
                    run.ready = message
                    log.info(
                        "model %r ready in %.1f s (worker pid %d, %s engine, %.1f MiB, %s, %s scheduling, %s malloc, %s BLAS)",
                        self.model_id, message.load_seconds, run.process.pid, message.engine, message.memory_bytes / 2**20,
                        f"pinned to CPU {','.join(map(str, message.cpus))}" if message.cpus else "not pinned",
                        message.scheduling,
                        message.allocator,
                        message.blas,
                    )
                    self._last_used = trio.current_time()
                    run.attempt.finish()
                elif isinstance(message, p.LoadFailed):
                    kind = _LOAD_FAILURE_KINDS.get(message.kind, ErrorKind.INTERNAL)
                    run.stop_reason = "load failed"
                    self._load_failed(run.attempt, ServerError(kind, message.message, code=f"model_{message.kind}"))
                elif isinstance(message, p.Pong):
                    waiter = self._pings.get(message.nonce)
                    if waiter is not None:
                        waiter[1].append(message)
                        waiter[0].set()
        except ProtocolError as exc:
            run.crash_cause = "protocol"
            run.crash_reason = f"the model worker sent a corrupt message ({exc}); it was killed and will be restarted"
            run.process.kill()
        except IPCError:
            pass  # The process's exit is what ends this run.

    async def _monitor(self, run: _Run) -> None:
        """Idle timeout, hang detection and unload requests, as deadlines."""
        while True:
            self._changed = trio.Event()
            if self._unload_requested:
                await self._stop(run, self._unload_reason)
                return
            now = trio.current_time()
            if self._state is WorkerState.READY and self._active == 0:
                idle_timeout = self._idle_timeout if self._keep_alive is None else self._keep_alive
                deadline = float("inf") if idle_timeout < 0 else self._last_used + idle_timeout
                if now >= deadline:
                    await self._stop(run, f"idle for {idle_timeout:g} s")
                    return
            elif self._state is WorkerState.READY:
                deadline = self._last_progress + self._config.hang_timeout
                if now >= deadline:
                    run.crash_cause = "hang"
                    run.crash_reason = (
                        f"the model worker made no progress for {self._config.hang_timeout:g} s "
                        "and was killed; it will be restarted"
                    )
                    run.process.kill()
                    return
            else:
                deadline = float("inf")
            with trio.move_on_at(deadline):
                await self._changed.wait()

    async def _stop(self, run: _Run, reason: str) -> None:
        run.stop_reason = reason
        self._state = WorkerState.UNLOADED
        log.info("unloading model %r: %s", self.model_id, reason)
        with contextlib.suppress(IPCError), trio.move_on_after(1):
            await run.channel.send(p.TO_WORKER.encode(p.Shutdown()))
        with trio.move_on_after(_EXIT_WAIT):
            await run.process.wait()
        if run.process.returncode is None:
            run.process.kill()
