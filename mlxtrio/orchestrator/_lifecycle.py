"""One model's state across its worker processes: a state machine that does no I/O.

States: ``unloaded → loading → ready → unloaded``, or ``failed`` (with a
back-off) when a load fails. It consumes the process side's events
(``_events.py``: started, exited, and the worker's own messages), the HTTP
side's requests (load, unload, a request begun or ended) and the time, and
answers the questions the coordinator (``_served_model.py``) acts on: may
this request wait for the model, must the model load again or wait out its
back-off, and is it time to unload it (idle) or kill it (hung). The time
always comes in as an argument, so every decision can be tested without a
clock or a process.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import attrs

from .. import _protocol as p
from .._errors import ErrorKind, ServerError
from ._events import Exited, ProcessEvent, Started, StartFailed

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ..ipc import RouterStatistics, TrioChannelStatistics
    from ._group import RankState

__all__ = ["Kill", "ModelLifecycle", "ModelState", "ModelStatus", "RankStatus", "Stop", "Wait"]

# Back-off after failed loads: 1 s, 2 s, 4 s ... capped.
_BACKOFF_BASE = 1.0
_BACKOFF_CAP = 60.0


class ModelState(str, enum.Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@attrs.frozen(kw_only=True)
class RankStatus:
    """One rank of a worker group: where it runs, whether its process does, and what it holds once loaded (else None)."""

    rank: int
    host: str
    pid: int
    state: str  # "running" or "exited"
    memory_bytes: int | None = None
    shard: str | None = None


@attrs.frozen(kw_only=True)
class ModelStatus:
    """One model as ``/admin/status`` and the metrics show it; the defaults describe a model never loaded."""

    model: str
    pid: int | None = None
    state: str = ModelState.UNLOADED.value
    restarts: int = 0
    # Worker processes started for this model so far.
    loads: int = 0
    loaded_at: float | None = None
    last_used_at: float | None = None
    memory_bytes: int | None = None
    # "batched" or "sequential" while loaded.
    engine: str | None = None
    # Requests in flight: decoding (at most the decode concurrency) and waiting beyond it.
    active_requests: int = 0
    queued_requests: int = 0
    failure: str | None = None
    retry_at: float | None = None
    # Unexpected exits by cause (crash, hang, protocol, generation), and the last one's reason.
    restart_causes: dict[str, int] = attrs.field(factory=dict)
    last_crash: str | None = None
    # How long the latest successful load took.
    load_seconds: float | None = None
    # When the idle timeout (or the latest request's keep_alive) unloads the model, if nothing comes first;
    # None unless it is loaded and idle with a deadline.
    unload_at: float | None = None
    # The CPUs the loaded worker is pinned to (MLX_WORKER_CPUS); empty: not pinned.
    cpus: tuple[int, ...] = ()
    # The malloc the loaded worker runs with (MLX_WORKER_ALLOCATOR), as it reports it.
    allocator: str | None = None
    # The BLAS the loaded worker's MLX runs with (MLX_WORKER_BLAS), as it reports it.
    blas: str | None = None
    # The scheduling policy of the loaded worker's threads, as it reports it ("batch" when pinned to one core).
    scheduling: str | None = None
    # The current worker's channel and its per-request routes, as the IPC layer counts them.
    channel: TrioChannelStatistics | None = None
    routes: RouterStatistics | None = None
    # A worker group's ranks, rank 0 first; empty for one process.
    ranks: tuple[RankStatus, ...] = ()


@attrs.frozen
class Stop:
    """Unload the model: ask the worker to exit, for this reason."""

    reason: str


@attrs.frozen
class Kill:
    """The worker is no longer trusted: kill it, for this cause and reason."""

    cause: str
    reason: str


@attrs.frozen
class Wait:
    """Nothing to do until this time (trio's clock), or until something changes."""

    until: float


@attrs.define(kw_only=True)
class ModelLifecycle:
    model_id: str
    # The model's own settings (a config file's alias may have its own), resolved by the catalog.
    decode_concurrency: int
    idle_timeout: float
    max_queue: int
    hang_timeout: float
    # Trio's clock at the latest load or request's end, which idle time counts from (at first: now).
    last_used: float
    # What the model serves as configured ("generate", "embed"; "auto": its worker tells, in its Ready).
    task: str = "auto"
    state: ModelState = ModelState.UNLOADED
    # The current process: its pid, its Ready once loaded, and why we stop it (its exit is then no crash).
    pid: int | None = None
    ready: p.Ready | None = None
    stop_reason: str | None = None
    # A load asked for and not settled yet; failed loads in a row, the latest one's error (also told to
    # whoever asks during the back-off), and when the back-off ends.
    loading: bool = False
    failures: int = 0
    failure: ServerError | None = None
    retry_at: float | None = None
    # Requests in flight, Ollama's keep_alive of the latest (seconds idle before unloading; None: the
    # idle timeout), an unload asked for (its reason), and the times of the latest progress and use.
    active: int = 0
    keep_alive: float | None = None
    unload_reason: str | None = None
    last_progress: float = 0.0
    used_at: float | None = None
    # For status: processes started, the latest load, unexpected exits by cause and the latest's reason.
    loads: int = 0
    loaded_at: float | None = None
    load_seconds: float | None = None
    restarts: int = 0
    restart_causes: dict[str, int] = attrs.Factory(dict)
    last_crash: str | None = None

    # --- the HTTP side's requests ------------------------------------------------

    def request_load(self) -> None:
        self.loading = True
        self.unload_reason = None

    def request_unload(self, reason: str) -> None:
        self.unload_reason = reason

    def began(self, sequences: int, *, now: float) -> None:
        self.active += sequences
        if self.active == sequences:
            # Progress is owed from now on, not since the worker last had work.
            self.last_progress = now

    def ended(self, sequences: int, *, now: float) -> None:
        self.active -= sequences
        self.last_used = self.used_at = now

    def check_capacity(self, sequences: int = 1) -> None:
        """Admission control: a bounded queue in front of the worker, then overloaded."""
        if self.active + sequences > self.decode_concurrency + self.max_queue:
            raise ServerError(
                ErrorKind.OVERLOADED,
                f"model {self.model_id!r} is at capacity ({self.decode_concurrency} decoding, "
                f"{self.max_queue} waiting); retry shortly",
                code="queue_full",
                retry_after=1.0,
            )

    def check_task(self, task: str) -> None:
        """Refuse a request of ``task`` ("generate", "embed") that the model does not serve, as its Ready or its config says."""
        serves = self.ready.task if self.ready is not None else self.task
        if serves in ("auto", task):
            return
        if task == "embed":
            message, code = "does not make embeddings: it is a generative model", "model_not_embedding"
        else:
            message, code = "is an embedding model: it makes embeddings (POST /v1/embeddings), it does not generate", "model_not_generative"
        raise ServerError(ErrorKind.INVALID_REQUEST, f"the model {self.model_id!r} {message}", code=code, param="model")

    def refusal(self, *, now: float) -> ServerError | None:
        """Why a load may not be tried now (the back-off after a failed one), or None."""
        if self.state is ModelState.FAILED and self.retry_at is not None:
            wait = self.retry_at - now
            if wait > 0:
                assert self.failure is not None
                return ServerError(
                    self.failure.kind,
                    f"{self.failure.message} (next attempt in {wait:.1f} s)",
                    code=self.failure.code,
                    retry_after=wait,
                )
        return None

    @property
    def idle(self) -> bool:
        """Loaded, serving nothing, and not being stopped."""
        return self.state is ModelState.READY and self.active == 0 and self.stop_reason is None

    # --- the monitor's decisions ---------------------------------------------------

    def decide(self, *, now: float) -> Stop | Kill | Wait:
        """What the running worker's monitor does now: idle timeout, hang detection, unload requests."""
        if self.unload_reason is not None:
            return Stop(self.unload_reason)
        if self.state is not ModelState.READY:
            return Wait(float("inf"))
        if self.active == 0:
            deadline = self.unload_deadline(now=now)
            return Stop(f"idle for {self._idle_limit:g} s") if now >= deadline else Wait(deadline)
        deadline = self.last_progress + self.hang_timeout
        if now >= deadline:
            return Kill(
                "hang", f"the model worker made no progress for {self.hang_timeout:g} s and was killed; it will be restarted"
            )
        return Wait(deadline)

    @property
    def _idle_limit(self) -> float:
        """Seconds idle before unloading: the latest request's keep_alive, else the idle timeout (negative: never)."""
        return self.idle_timeout if self.keep_alive is None else self.keep_alive

    def unload_deadline(self, *, now: float) -> float:
        """When (trio's clock) the model unloads if no request comes: a busy one's idle time counts from ``now``."""
        limit = self._idle_limit
        return float("inf") if limit < 0 else (self.last_used if self.active == 0 else now) + limit

    def begin_stop(self, reason: str) -> None:
        self.stop_reason = reason
        self.state = ModelState.UNLOADED

    # --- the process side's events ---------------------------------------------------

    def handle(self, event: ProcessEvent, *, now: float) -> None:
        if isinstance(event, p.Step):
            self.last_progress = now
        elif isinstance(event, Started):
            self.pid, self.ready, self.stop_reason = event.pid, None, None
            self.loads += 1
            self.state = ModelState.LOADING
        elif isinstance(event, StartFailed):
            self._load_failed(ServerError(ErrorKind.UNAVAILABLE, event.reason, code="worker_unavailable"), now=now)
        elif isinstance(event, Exited):
            self._exited(event, now=now)
        else:
            # Any message from the worker: it is making progress.
            self.last_progress = now
            if isinstance(event, p.Ready):
                self._loaded(event, now=now)
            elif isinstance(event, p.LoadFailed):
                # The worker exits by itself after saying so: no crash.
                self.stop_reason = "load failed"
                self._load_failed(ServerError(event.kind, event.message, code=event.code), now=now)

    def exit_error(self, event: Exited) -> ServerError:
        """What the requests open when the process exited are told."""
        if self.stop_reason is not None:
            return ServerError(ErrorKind.UNAVAILABLE, f"the model was unloaded ({self.stop_reason})", code="model_unloaded")
        return ServerError(ErrorKind.UNAVAILABLE, event.reason, code="worker_crashed")

    def _loaded(self, ready: p.Ready, *, now: float) -> None:
        self.state = ModelState.READY
        self.failures = 0
        self.failure = None
        self.retry_at = None
        self.loaded_at = self.last_used = now
        self.load_seconds = ready.load_seconds
        self.ready = ready
        self.loading = False

    def _exited(self, event: Exited, *, now: float) -> None:
        error = self.exit_error(event)
        crashed = self.stop_reason is None
        if crashed:
            self.restart_causes[event.cause] = self.restart_causes.get(event.cause, 0) + 1
            self.last_crash = event.reason
        self.pid = self.ready = None
        if self.loading:
            # Died or was stopped while loading. Once may be bad luck (the
            # kernel's OOM killer, an operator): try again at once. Again is a
            # crash loop: back off.
            message = f"the model worker died while loading {self.model_id!r}: {error.message}"
            self._load_failed(
                ServerError(ErrorKind.UNAVAILABLE, message, code="load_failed"), now=now, at_once=crashed and self.failures == 0
            )
        elif self.state is not ModelState.FAILED:
            if crashed:
                self.restarts += 1
            self.state = ModelState.UNLOADED

    def _load_failed(self, error: ServerError, *, now: float, at_once: bool = False) -> None:
        self.failures += 1
        self.loading = False
        self.state = ModelState.FAILED
        wait = 0.0 if at_once else min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** (self.failures - 1))
        self.retry_at = now + wait
        # Those who waited for this load are told when the next may be tried, as those refused during the back-off are.
        self.failure = ServerError(error.kind, error.message, code=error.code, retry_after=wait)

    # --- status -----------------------------------------------------------------------

    def rank_statuses(self, ranks: Iterable[RankState]) -> tuple[RankStatus, ...]:
        """A group's ranks: their processes, and what each reported once loaded."""
        loaded = {info.rank: info for info in self.ready.ranks} if self.ready is not None else {}
        return tuple(
            RankStatus(
                rank=rank.rank, host=rank.host, pid=rank.pid, state="running" if rank.running else "exited",
                memory_bytes=loaded[rank.rank].memory_bytes if rank.rank in loaded else None,
                shard=loaded[rank.rank].shard if rank.rank in loaded else None,
            )
            for rank in ranks
        )

    def statistics(self, *, now: float, wall_offset: float) -> ModelStatus:
        """The status at trio's ``now``; a time on trio's clock plus ``wall_offset`` is its wall-clock time.

        A past event's time is that sum alone, not computed from ``now``: a status read twice
        with nothing changed between is the same, to the last digit.
        """

        def wall_time(at: float | None) -> float | None:
            return None if at is None else at + wall_offset

        ready = self.ready
        unload_at = self.unload_deadline(now=now) if self.idle and self.unload_reason is None else None
        return ModelStatus(
            model=self.model_id,
            pid=self.pid,
            state=self.state.value,
            restarts=self.restarts,
            loads=self.loads,
            loaded_at=wall_time(self.loaded_at),
            last_used_at=wall_time(self.used_at),
            memory_bytes=ready.memory_bytes if ready is not None else None,
            engine=ready.engine if ready is not None else None,
            active_requests=self.active,
            queued_requests=max(0, self.active - self.decode_concurrency),
            failure=self.failure.message if self.failure is not None else None,
            retry_at=None if self.retry_at is None else max(now, self.retry_at) + wall_offset,
            restart_causes=dict(self.restart_causes),
            last_crash=self.last_crash,
            load_seconds=self.load_seconds,
            unload_at=None if unload_at is None or unload_at == float("inf") else wall_time(unload_at),
            cpus=ready.cpus if ready is not None else (),
            allocator=ready.allocator if ready is not None else None,
            blas=ready.blas if ready is not None else None,
            scheduling=ready.scheduling if ready is not None else None,
        )
