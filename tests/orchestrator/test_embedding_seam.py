"""ServedModel.embed against a real process on a real channel (tests/orchestrator/fake_embedder.py, no MLX): routing,
refusals, the queue, cancellation, a crash, and the refusals by task."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

from mlxtrio import ErrorKind, ServerError, ServerHandle
from mlxtrio import _protocol as p
from mlxtrio._model_settings import ModelSettings
from mlxtrio.orchestrator import _process

from ..helpers import bounded
from .fake_embedder import DIMENSIONS, vector

FAKE_EMBEDDER = str(Path(__file__).with_name("fake_embedder.py"))


@pytest.fixture
def server_settings(tmp_path: Path) -> dict:
    # A model of the config file whose task its worker tells ("auto"), served by the fake.
    (tmp_path / "fake-model").mkdir()
    # One decoding, none waiting: the second request in flight is over capacity. A request timeout a test waits out.
    return {
        "decode_concurrency": 1, "max_queue": 0, "request_timeout": 1.0,
        "models": (ModelSettings(name="fake", path=str(tmp_path / "fake-model")),),
    }


@pytest.fixture
def embedder(server: ServerHandle, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """Every model's worker is the fake embedder; the served model "fake"."""
    monkeypatch.setattr(
        _process, "worker_command", lambda config, spec: [sys.executable, FAKE_EMBEDDER, msgspec.json.encode(config).decode(), spec]
    )

    async def served():  # noqa: ANN202
        return await server.state.supervisor.served_model("fake")

    return served


def _rows(embedded: p.Embedded) -> list[list[float]]:
    floats = struct.unpack(f"<{len(embedded.vectors) // 4}f", embedded.vectors)
    return [list(floats[start : start + embedded.dimensions]) for start in range(0, len(floats), embedded.dimensions)]


@bounded(60)
async def test_vectors_come_back_in_order_and_the_model_is_loaded_on_demand(embedder):
    served = await embedder()
    embedded = await served.embed(("a b c", (1, 2), "d"))
    assert embedded.dimensions == DIMENSIONS and embedded.token_counts == (3, 2, 1)
    expected = [vector("a b c"), vector((1, 2)), vector("d")]
    assert _rows(embedded) == [pytest.approx(row, abs=1e-6) for row in expected]
    status = served.statistics()
    assert (status.state, status.loads, status.active_requests) == ("ready", 1, 0)


@bounded(60)
async def test_keep_alive_rules_the_model_s_life_after_an_embedding(embedder):
    served = await embedder()
    await served.embed(("stay",), keep_alive=-1)
    assert served.statistics().state == "ready"
    # keep_alive 0: unloaded as soon as it is idle.
    await served.embed(("go",), keep_alive=0)
    await served.wait_stopped()
    assert served.statistics().state == "unloaded"


@bounded(60)
async def test_a_refusal_is_a_server_error_naming_the_input(embedder):
    served = await embedder()
    with pytest.raises(ServerError) as caught:
        await served.embed(("fine", "too long"), param="input")
    assert (caught.value.kind, caught.value.code, caught.value.param) == (ErrorKind.INVALID_REQUEST, "context_length_exceeded", "input[1]")


@bounded(60)
async def test_the_queue_bounds_embeddings_and_a_cancelled_one_is_dropped_in_the_worker(embedder):
    served = await embedder()
    await served.ensure_ready()
    async with trio.open_nursery() as nursery:
        waiting = trio.CancelScope()

        async def wait() -> None:
            with waiting:
                await served.embed(("wait",))

        nursery.start_soon(wait)
        while served.statistics().active_requests == 0:
            await trio.testing.wait_all_tasks_blocked()
        before = served.expires_at()
        with pytest.raises(ServerError) as caught:
            await served.embed(("other",), keep_alive=-1)
        assert (caught.value.kind, caught.value.code) == (ErrorKind.OVERLOADED, "queue_full")
        # A refused request's keep_alive is not the model's: it still unloads when idle.
        assert served.expires_at() is not None and served.expires_at() >= before
        _, pong = await served.ping()
        assert pong.active_sequences == 1
        waiting.cancel()
    # The cancel went out before the request left: the worker holds nothing.
    _, pong = await served.ping()
    assert pong.active_sequences == 0 and served.statistics().active_requests == 0


@bounded(60)
async def test_the_request_timeout_applies_over_http_and_the_worker_drops_the_request(embedder, client):
    served = await embedder()
    response = await client.post("/v1/embeddings", json={"model": "fake", "input": ["wait"]})
    assert response.status_code == 504 and response.json()["error"]["code"] == "timeout", response.text
    _, pong = await served.ping()
    assert pong.active_sequences == 0


@bounded(60)
async def test_a_crash_fails_the_request_at_once_and_the_next_loads_afresh(embedder):
    served = await embedder()
    with pytest.raises(ServerError) as caught:
        await served.embed(("crash",))
    assert (caught.value.kind, caught.value.code) == (ErrorKind.UNAVAILABLE, "worker_crashed")
    await served.wait_stopped()
    assert (await served.embed(("again",))).token_counts == (1,)
    assert served.statistics().restarts == 1


@bounded(60)
async def test_an_embedding_model_refuses_generation_once_its_ready_says_so(embedder):
    served = await embedder()
    await served.ensure_ready()
    with pytest.raises(ServerError) as caught:
        async with served.generate(p.SamplingParams(max_tokens=4), prompt="hi"):
            pass
    assert (caught.value.kind, caught.value.code, caught.value.param) == (ErrorKind.INVALID_REQUEST, "model_not_generative", "model")
    assert served.statistics().active_requests == 0


def test_a_configured_task_refuses_before_any_load_and_auto_waits_for_the_ready():
    from mlxtrio.orchestrator._lifecycle import ModelLifecycle

    def lifecycle(task: str) -> ModelLifecycle:
        return ModelLifecycle(model_id="m", decode_concurrency=1, idle_timeout=1, max_queue=0, hang_timeout=1, last_used=0, task=task)

    with pytest.raises(ServerError, match="does not make embeddings") as caught:
        lifecycle("generate").check_task("embed")
    assert (caught.value.code, caught.value.param) == ("model_not_embedding", "model")
    with pytest.raises(ServerError, match="is an embedding model"):
        lifecycle("embed").check_task("generate")
    unknown = lifecycle("auto")
    unknown.check_task("embed")
    unknown.check_task("generate")
    unknown.handle(p.Ready("m", 0.1, 1, task="generate"), now=0)
    with pytest.raises(ServerError, match="does not make embeddings"):
        unknown.check_task("embed")
