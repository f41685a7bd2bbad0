"""Before a batch's first step the worker waits, briefly, for the Generates it was told would follow.

The worker's loop (``_serve``) runs in a thread of this process with the
demo model, on a real channel; the test plays the orchestrator's end. The
waits are set long here (``follower_wait``), so that what the worker does
with the timing of these sends shows plainly.
"""

from __future__ import annotations

import threading
import time

import pytest

from mlxtrio import _protocol as p
from mlxtrio.ipc import Channel
from mlxtrio.worker._batch import BatchEngine
from mlxtrio.worker._main import _serve
from mlxtrio.worker._sequential import SequentialEngine

from .engines import WORKER, demo_engine

# Long enough that a step never passes for a wait, short enough for a test.
APART = 0.3


class Orchestrator:
    """The orchestrator's end of a worker loop running in a thread."""

    def __init__(self, demo, *, follower_wait: float, forming_limit: float = 60.0, engine_type: type = BatchEngine) -> None:  # noqa: ANN001
        self.end = Channel.create(capacity=1 << 20)
        worker_end = Channel.attach(self.end.spec)
        self.end.unlink()
        engine = demo_engine(engine_type, demo)
        encode = p.TO_ORCHESTRATOR.encode
        self.result: list[int] = []
        # For each request that has ended, the number of the Step frame with its last delta.
        self.finished: dict[int, int] = {}
        self._frames = 0

        def serve() -> None:
            try:
                self.result.append(
                    _serve(
                        worker_end, engine, lambda message: worker_end.writer.send(encode(message)), lambda *_: None,
                        follower_wait=follower_wait, forming_limit=forming_limit, grammar_compile_timeout=WORKER.grammar_compile_timeout,
                    )
                )
            finally:
                worker_end.close()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()

    def generate(self, request_id: int, *, followers: int, max_tokens: int = 8) -> None:
        params = p.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        self.end.writer.send(p.TO_WORKER.encode(p.Generate(request_id, params, None, f"request {request_id}", followers=followers)))

    def step(self, timeout: float = 30.0) -> tuple[float, p.Step]:
        """The next Step frame, and when it came."""
        while True:
            frame = self.end.reader.receive(timeout=timeout)
            assert frame is not None, "no frame from the worker"
            message = p.TO_ORCHESTRATOR.decode(frame)
            if isinstance(message, p.Step):
                self._frames += 1
                for delta in message.deltas:
                    if delta.finish_reason is not None:
                        self.finished[delta.request_id] = self._frames
                return time.monotonic(), message

    def until_finished(self, request_ids: set[int]) -> None:
        while not request_ids <= self.finished.keys():
            self.step()

    def close(self) -> None:
        self.end.writer.send(p.TO_WORKER.encode(p.Shutdown()))
        self.thread.join(30)
        self.end.close()
        assert self.result == [p.WorkerExit.OK]


@pytest.fixture
def orchestrators(demo):  # noqa: ANN201
    """Makes worker loops with the given options; closes them at the test's end."""
    made: list[Orchestrator] = []

    def make(**options: object) -> Orchestrator:
        made.append(Orchestrator(demo, **options))
        return made[-1]

    yield make
    for end in made:
        end.close()


@pytest.fixture
def orchestrator(orchestrators, request: pytest.FixtureRequest) -> Orchestrator:  # noqa: ANN001
    """A worker loop with the follower wait a test asks for (indirect parametrization), 10 s by default."""
    return orchestrators(follower_wait=getattr(request, "param", 10.0))


def test_an_announced_follower_joins_the_first_step(orchestrator: Orchestrator):
    orchestrator.generate(1, followers=1)
    time.sleep(APART)  # the follower comes later than any step would take
    sent = time.monotonic()
    orchestrator.generate(2, followers=0)
    arrived, _ = orchestrator.step()
    assert arrived >= sent  # nothing was stepped before the follower came
    orchestrator.until_finished({1, 2})
    # Their prompts went in together: as long, they ended in one step.
    assert orchestrator.finished[1] == orchestrator.finished[2]


def test_a_request_alone_starts_at_once(orchestrator: Orchestrator):
    """Told that nothing follows, the worker steps without waiting (the wait is 10 s here)."""
    sent = time.monotonic()
    orchestrator.generate(1, followers=0)
    arrived, _ = orchestrator.step()
    assert arrived - sent < APART
    orchestrator.until_finished({1})


@pytest.mark.parametrize("orchestrator", [APART], indirect=True)
def test_a_follower_that_never_comes_costs_one_wait(orchestrator: Orchestrator):
    sent = time.monotonic()
    orchestrator.generate(1, followers=3)
    arrived, _ = orchestrator.step()
    assert APART <= arrived - sent < 10 * APART
    orchestrator.until_finished({1})


def test_the_wait_is_bounded_in_all(orchestrators):  # noqa: ANN001
    """However many are announced and however long each may take, the batch starts by ``forming_limit``."""
    end = orchestrators(follower_wait=10.0, forming_limit=APART)
    sent = time.monotonic()
    end.generate(1, followers=5)
    arrived, _ = end.step()
    assert APART <= arrived - sent < 10 * APART
    end.until_finished({1})


def test_no_wait_while_the_engine_decodes(orchestrator: Orchestrator):
    """A newcomer to a running batch announces followers; the running batch must not stall for them."""
    orchestrator.generate(1, followers=0, max_tokens=200)
    orchestrator.step()
    orchestrator.generate(2, followers=5)
    previous, _ = orchestrator.step()
    for _ in range(10):
        arrived, _ = orchestrator.step()
        assert arrived - previous < APART
        previous = arrived
    orchestrator.until_finished({1, 2})


def test_the_sequential_engine_does_not_wait(orchestrators):  # noqa: ANN001
    """It takes requests one after another whatever comes: waiting would only delay the first."""
    end = orchestrators(follower_wait=10.0, engine_type=SequentialEngine)
    sent = time.monotonic()
    end.generate(1, followers=3)
    arrived, _ = end.step()
    assert arrived - sent < APART
    end.until_finished({1})
