"""Which stop string ended a sequence: told on its last delta (Anthropic's ``stop_sequence``)."""

from __future__ import annotations

import msgspec
import pytest

from mlxtrio import _protocol as p
from mlxtrio.worker._batch import BatchEngine
from mlxtrio.worker._sequential import SequentialEngine

from .engines import GREEDY, demo_engine


def _last(engine, request: p.Generate) -> tuple[str, p.Delta]:  # noqa: ANN001
    engine.admit(request)
    text = ""
    for _ in range(200):
        deltas, failures = engine.step()
        assert failures == []
        for delta in deltas:
            text += delta.text
            if delta.finish_reason is not None:
                return text, delta
    raise AssertionError("the sequence never ended")


@pytest.mark.parametrize("engine_type", [BatchEngine, SequentialEngine])
def test_the_last_delta_names_the_stop_string_that_ended_it(demo, engine_type):
    engine = demo_engine(engine_type, demo, prompt_cache_bytes=0)
    params = msgspec.structs.replace(GREEDY, max_tokens=24, temperature=1.0, seed=3)
    full, last = _last(engine, p.Generate(1, params, None, "the cache"))
    assert (last.finish_reason, last.stop_string) == ("length", None)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert len(stop) == 3 and full.index(stop) > 0
    stops = ("never written at all", stop, stop + "x")
    text, last = _last(engine, p.Generate(2, msgspec.structs.replace(params, stop=stops), None, "the cache"))
    assert text == full[: full.index(stop)]
    assert (last.finish_reason, last.stop_string) == ("stop", stop)
