"""The model's state machine alone: events and times in, decisions out, no process and no clock."""

from __future__ import annotations

import pytest

from mlxtrio import ErrorKind, ServerError
from mlxtrio import _protocol as p
from mlxtrio.orchestrator._events import Exited, Started, StartFailed
from mlxtrio.orchestrator._lifecycle import Kill, ModelLifecycle, ModelState, Stop, Wait


def _lifecycle(**settings: object) -> ModelLifecycle:
    values: dict = {"model_id": "m", "decode_concurrency": 2, "idle_timeout": 10.0, "max_queue": 1, "hang_timeout": 5.0}
    return ModelLifecycle(**{**values, **settings}, last_used=0.0)


def _ready(lifecycle: ModelLifecycle, *, at: float) -> None:
    lifecycle.request_load()
    lifecycle.handle(Started(pid=42), now=at)
    lifecycle.handle(p.Ready("m", load_seconds=1.0, memory_bytes=100), now=at)


def _crash() -> Exited:
    return Exited(pid=42, returncode=-9, cause="crash", reason="the model worker was killed by SIGKILL")


def test_a_loaded_model_is_stopped_once_idle_for_its_timeout_or_keep_alive():
    lifecycle = _lifecycle()
    _ready(lifecycle, at=100.0)
    assert (lifecycle.state, lifecycle.loading, lifecycle.pid) == (ModelState.READY, False, 42)
    assert lifecycle.decide(now=105.0) == Wait(110.0)
    assert lifecycle.decide(now=110.0) == Stop("idle for 10 s")
    lifecycle.keep_alive = -1  # forever
    assert lifecycle.decide(now=1e9) == Wait(float("inf"))
    lifecycle.began(1, now=120.0)
    lifecycle.ended(1, now=130.0)
    lifecycle.keep_alive = 2
    assert lifecycle.decide(now=131.0) == Wait(132.0)


def test_the_unload_deadline_is_what_the_idle_stop_waits_for_and_a_busy_models_counts_from_now():
    """What Ollama's /api/ps shows as expires_at."""
    lifecycle = _lifecycle()
    _ready(lifecycle, at=100.0)
    assert lifecycle.unload_deadline(now=105.0) == 110.0 and lifecycle.decide(now=105.0) == Wait(110.0)
    lifecycle.began(1, now=106.0)
    assert lifecycle.unload_deadline(now=107.0) == 117.0
    lifecycle.ended(1, now=108.0)
    lifecycle.keep_alive = 60
    assert lifecycle.unload_deadline(now=109.0) == 168.0
    lifecycle.keep_alive = -1
    assert lifecycle.unload_deadline(now=109.0) == float("inf")


def test_a_worker_with_work_and_no_progress_is_killed_for_hanging():
    lifecycle = _lifecycle()
    _ready(lifecycle, at=0.0)
    lifecycle.began(1, now=50.0)
    assert lifecycle.decide(now=54.0) == Wait(55.0)
    lifecycle.handle(p.Step(()), now=54.0)
    decision = lifecycle.decide(now=59.0)
    assert isinstance(decision, Kill) and decision.cause == "hang" and "no progress for 5 s" in decision.reason


def test_an_unload_asked_for_is_a_stop_and_its_exit_no_crash():
    lifecycle = _lifecycle()
    _ready(lifecycle, at=0.0)
    lifecycle.request_unload("unloaded on request")
    assert lifecycle.decide(now=1.0) == Stop("unloaded on request")
    lifecycle.begin_stop("unloaded on request")
    assert lifecycle.exit_error(_crash()).code == "model_unloaded"
    lifecycle.handle(_crash(), now=2.0)
    assert (lifecycle.state, lifecycle.restarts, lifecycle.restart_causes, lifecycle.pid) == (ModelState.UNLOADED, 0, {}, None)


def test_a_crash_counts_by_cause_and_tells_open_requests():
    lifecycle = _lifecycle()
    _ready(lifecycle, at=0.0)
    error = lifecycle.exit_error(_crash())
    assert (error.kind, error.code) == (ErrorKind.UNAVAILABLE, "worker_crashed") and "SIGKILL" in error.message
    lifecycle.handle(_crash(), now=1.0)
    assert (lifecycle.state, lifecycle.restarts, lifecycle.restart_causes) == (ModelState.UNLOADED, 1, {"crash": 1})
    assert lifecycle.last_crash == error.message


def test_deaths_while_loading_are_retried_once_at_once_then_backed_off():
    lifecycle = _lifecycle()
    for attempt, wait in ((1, 0.0), (2, 2.0), (3, 4.0)):
        lifecycle.request_load()
        lifecycle.handle(Started(pid=attempt), now=10.0)
        lifecycle.handle(_crash(), now=10.0)
        assert (lifecycle.state, lifecycle.loading, lifecycle.failures) == (ModelState.FAILED, False, attempt)
        assert lifecycle.failure is not None and lifecycle.failure.code == "load_failed"
        assert lifecycle.retry_at == 10.0 + wait
    refusal = lifecycle.refusal(now=11.0)
    assert refusal is not None and refusal.retry_after == pytest.approx(3.0) and "next attempt in 3.0 s" in refusal.message
    assert lifecycle.refusal(now=14.0) is None
    _ready(lifecycle, at=14.0)
    assert (lifecycle.failures, lifecycle.failure, lifecycle.retry_at) == (0, None, None)


def test_a_load_the_worker_refuses_fails_by_its_kind_and_is_no_crash():
    lifecycle = _lifecycle()
    lifecycle.request_load()
    lifecycle.handle(Started(pid=7), now=0.0)
    lifecycle.handle(p.LoadFailed(p.ErrorKind.NOT_FOUND, "no such model", "model_not_found"), now=1.0)
    assert lifecycle.failure is not None
    assert (lifecycle.failure.kind, lifecycle.failure.code) == (ErrorKind.NOT_FOUND, "model_not_found")
    lifecycle.handle(Exited(pid=7, returncode=3, cause="crash", reason="exited (status 3)"), now=2.0)
    assert (lifecycle.state, lifecycle.restart_causes) == (ModelState.FAILED, {})


def test_a_worker_that_cannot_start_fails_the_load():
    lifecycle = _lifecycle()
    lifecycle.request_load()
    lifecycle.handle(StartFailed("could not start a worker: no such file"), now=0.0)
    assert lifecycle.state is ModelState.FAILED and not lifecycle.loading and lifecycle.loads == 0
    assert lifecycle.failure is not None and lifecycle.failure.code == "worker_unavailable"


def test_admission_allows_the_decode_concurrency_and_the_queue_then_refuses():
    lifecycle = _lifecycle()
    lifecycle.began(3, now=0.0)
    with pytest.raises(ServerError) as refused:
        lifecycle.check_capacity(1)
    assert refused.value.kind is ErrorKind.OVERLOADED and refused.value.retry_after == 1.0


def test_statistics_give_wall_clock_times():
    lifecycle = _lifecycle()
    _ready(lifecycle, at=100.0)
    lifecycle.began(3, now=101.0)
    status = lifecycle.statistics(now=110.0, wall_offset=999_890.0)
    assert (status.state, status.pid, status.loaded_at, status.last_used_at) == ("ready", 42, 999_990.0, None)
    assert (status.active_requests, status.queued_requests, status.memory_bytes) == (3, 1, 100)
