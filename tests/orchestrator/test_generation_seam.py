"""What a surface gets from a generation, through the real server's demo worker: the seam the Messages and
Responses surfaces stand on (``GenerationRequest`` in, ``Collected`` out)."""

from __future__ import annotations

import pytest

from mlxtrio import ServerHandle
from mlxtrio import _protocol as p
from mlxtrio.api import _generation
from mlxtrio.api._generation import Collected, Generation, GenerationRequest
from mlxtrio.api._observe import RequestRecord

_PARAMS = p.SamplingParams(max_tokens=16, temperature=0.0)
_MESSAGES = (p.ChatMessage("system", "be brief"), p.ChatMessage("user", "the cache"))


@pytest.fixture
def collect(server: ServerHandle, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """Collect a GenerationRequest as a surface's non-streaming answer does, outside an HTTP request."""
    state = server.state

    async def run(request: GenerationRequest) -> Collected:
        record = RequestRecord("req-seam", "POST", "seam", state.metrics)
        monkeypatch.setattr(_generation, "current_record", lambda: record)
        record.model = request.model
        served = await state.supervisor.served_model(request.model)
        collected = await Generation(request, served, None, state.config.request_timeout, state.in_flight).collect()
        record.finish(200)
        return collected

    return run


async def test_counting_thinking_and_stop_strings_reach_the_collected_answer(server: ServerHandle, collect):
    plain = await collect(GenerationRequest(model="demo", params=_PARAMS, messages=_MESSAGES))
    assert plain.texts[0] and plain.reasonings == [""] and plain.lasts[0].stop_string is None
    # A count: the prompt generating reports, nothing generated, and no prompt tokens served in the metrics.
    served_before = server.state.metrics.prompt_tokens.labels("demo")._value.get()  # noqa: SLF001
    counted = await collect(GenerationRequest(model="demo", params=_PARAMS, messages=_MESSAGES, count_only=True))
    assert server.state.metrics.prompt_tokens.labels("demo")._value.get() == served_before  # noqa: SLF001
    assert (counted.texts, counted.lasts[0].finish_reason) == ([""], "counted")
    assert (counted.usage.prompt_tokens, counted.usage.completion_tokens) == (plain.usage.prompt_tokens, 0)
    # Thinking on: the demo's template opens a think block, so all it writes is reasoning.
    thought = await collect(GenerationRequest(model="demo", params=_PARAMS, messages=_MESSAGES, thinking=True))
    assert thought.texts == [""] and thought.reasonings[0] and thought.usage.completion_tokens == _PARAMS.max_tokens
    # A stop string: named.
    stop = plain.texts[0][3:6]
    stopped = await collect(
        GenerationRequest(model="demo", params=p.SamplingParams(max_tokens=16, temperature=0.0, stop=("zzzz", stop)), messages=_MESSAGES)
    )
    assert stopped.texts[0] == plain.texts[0][: plain.texts[0].index(stop)]
    assert (stopped.lasts[0].finish_reason, stopped.lasts[0].stop_string) == ("stop", stop)
