"""single_stream_pairs.py's account of the decoding thread (Linux schedstat): what its CPU figures rest on."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from single_stream_pairs import thread_times, with_times  # noqa: E402


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_the_main_threads_cpu_time_is_read_in_nanoseconds():
    before = thread_times(os.getpid())
    assert before is not None
    _spin(0.05)
    after = thread_times(os.getpid())
    assert after is not None
    ran = after[0] - before[0]
    assert 0.045e9 <= ran <= 1e9
    assert after[1] >= before[1]


def test_per_token_figures_and_what_is_left_out():
    pid = os.getpid()
    before = thread_times(pid)
    _spin(0.04)
    timed = with_times({"tokens": 4, "tps": 1.0}, pid, before)
    assert 10_000 <= timed["cpu_us_per_token"] <= 250_000  # 40 ms over 4 tokens, in µs
    assert timed["runq_us_per_token"] >= 0
    assert timed["tps"] == 1.0
    # No account before, a process gone, or no tokens: the result as it was.
    assert with_times({"tokens": 4}, pid, None) == {"tokens": 4}
    assert thread_times(2**22 + 12345) is None
    assert with_times({"tokens": 0}, pid, before) == {"tokens": 0}
