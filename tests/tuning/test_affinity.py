"""Worker CPU pinning (MLX_WORKER_CPUS) and the scheduling policy that comes with one core, against the real server and a real worker.

Linux only: os.sched_setaffinity and SCHED_BATCH do not exist on macOS, where nothing is pinned.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from mlxtrio.tuning import allowed_cpus, choose_core, held_cpus, other_workers_cpus, parse_worker_cpus

from ..helpers import bounded, kill_if_running, loaded_entry, make_config, start_server

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux-only")


def thread_cpus(pid: int) -> list[set[int]]:
    """The CPUs each thread of ``pid`` may run on."""
    return [os.sched_getaffinity(int(task)) for task in os.listdir(f"/proc/{pid}/task")]


def thread_policies(pid: int) -> set[int]:
    """The scheduling policies the threads of ``pid`` run under."""
    return {os.sched_getscheduler(int(task)) for task in os.listdir(f"/proc/{pid}/task")}


def free_core_for(pid: int) -> int | None:
    """The core auto gives a first model's worker ``pid``, the other mlxtrio workers now running (anyone's) being what they are."""
    others = [cpus for other, cpus in other_workers_cpus().items() if other != pid]
    return choose_core(allowed_cpus()[-1], allowed_cpus(), held_cpus(others, allowed_cpus()))


@bounded(120)
async def test_by_default_a_cpu_worker_is_pinned_to_one_core_with_all_its_threads(admin):
    entry = await loaded_entry(admin)
    # The last core, unless another mlxtrio worker on this machine holds it.
    expected = free_core_for(entry["pid"])
    assert expected is not None
    assert entry["cpus"] == [expected]
    threads = thread_cpus(entry["pid"])
    assert len(threads) > 1  # MLX's own threads are there, and pinned too
    assert all(cpus == {expected} for cpus in threads)
    # On one core, every thread without wake-up preemption, and the worker says so.
    assert entry["scheduling"] == "batch"
    assert thread_policies(entry["pid"]) == {os.SCHED_BATCH}
    # The orchestrator itself is neither pinned nor batch.
    assert os.sched_getaffinity(0) == set(allowed_cpus())
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


@pytest.mark.parametrize("server_settings", [{"worker_cpus": "none"}])
@bounded(120)
async def test_none_leaves_the_worker_on_every_cpu(admin):
    entry = await loaded_entry(admin)
    assert entry["cpus"] == []
    assert all(cpus == set(allowed_cpus()) for cpus in thread_cpus(entry["pid"]))
    assert entry["scheduling"] == "normal"
    assert thread_policies(entry["pid"]) == {os.SCHED_OTHER}


@pytest.mark.parametrize("server_settings", [{"worker_cpus": str(allowed_cpus()[0])}])
@bounded(120)
async def test_a_cpu_list_is_used_as_given(admin):
    entry = await loaded_entry(admin)
    assert entry["cpus"] == [allowed_cpus()[0]]
    assert all(cpus == {allowed_cpus()[0]} for cpus in thread_cpus(entry["pid"]))
    assert entry["scheduling"] == "batch"


@pytest.mark.skipif(len(allowed_cpus()) < 2, reason="needs two CPUs")
@pytest.mark.parametrize("server_settings", [{"worker_cpus": f"{allowed_cpus()[0]},{allowed_cpus()[-1]}"}])
@bounded(120)
async def test_a_worker_on_several_cores_keeps_the_default_policy(admin):
    """Its threads may then run on different cores, where they do not preempt each other."""
    entry = await loaded_entry(admin)
    assert entry["cpus"] == [allowed_cpus()[0], allowed_cpus()[-1]]
    assert entry["scheduling"] == "normal"
    assert thread_policies(entry["pid"]) == {os.SCHED_OTHER}


def test_batch_this_process_covers_every_thread_and_those_started_after():
    """In a child process, so that the test run's own threads keep their policy."""
    script = """
import os, threading
from mlxtrio.tuning import batch_this_process, scheduling_policy
before = threading.Event(); stop = threading.Event()
early = threading.Thread(target=lambda: (before.set(), stop.wait())); early.start(); before.wait()
print(scheduling_policy())
assert batch_this_process()
late = threading.Thread(target=stop.wait); late.start()
policies = {os.sched_getscheduler(int(task)) for task in os.listdir("/proc/self/task")}
print(len(os.listdir("/proc/self/task")), sorted(policies) == [os.SCHED_BATCH], scheduling_policy())
os.sched_setscheduler(early.native_id, os.SCHED_OTHER, os.sched_param(0))
print(scheduling_policy())
stop.set()
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split("\n")[:3] == ["normal", "3 True batch", "mixed"]


def test_auto_gives_each_model_its_own_core_from_the_last_down():
    cpus = allowed_cpus()
    auto = parse_worker_cpus("auto")
    assert [auto.for_worker(slot) for slot in range(len(cpus) + 1)] == [
        *(((cpu,), True) for cpu in reversed(cpus)),
        ((cpus[-1],), True),
    ]
    assert parse_worker_cpus("none").for_worker(0) == ((), False)
    assert parse_worker_cpus(f" {cpus[0]}-{cpus[-1]} ").for_worker(5) == (cpus, False)


@pytest.mark.parametrize("value", ["", "fast", "1-0", "-1", "0,,1", "0-x", "100000"])
def test_bad_settings_are_refused_at_start(value: str, cache_dir: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="worker_cpus"):
        make_config(cache_dir, tmp_path, worker_cpus=value)
    with pytest.raises(ValueError, match="worker_cpus"):
        parse_worker_cpus(value)


def test_a_worker_that_cannot_pin_goes_on_unpinned(capsys: pytest.CaptureFixture[str], cache_dir: Path, tmp_path: Path):
    """Pinning speeds a worker up; failing to pin (a CPU taken away since the start) must not stop it loading."""
    import msgspec

    from mlxtrio.orchestrator import ModelCatalog
    from mlxtrio.worker._main import _pin

    before = os.sched_getaffinity(0)
    catalog = ModelCatalog(make_config(cache_dir, tmp_path))
    config = msgspec.structs.replace(
        catalog.worker_config(catalog.resolve("demo")), cpus=(1 << 16,), cpus_for_cpu_backend_only=False
    )
    assert _pin(config) == ()
    assert "running unpinned" in capsys.readouterr().err
    assert os.sched_getaffinity(0) == before
    # Nor does it give up wake-up preemption.
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_auto_chooses_a_core_no_other_worker_holds_from_its_own_down():
    cpus = (0, 1, 2, 3)
    assert choose_core(3, cpus, set()) == 3
    assert choose_core(3, cpus, {3}) == 2
    assert choose_core(3, cpus, {3, 2, 0}) == 1
    # A second model's worker starts one core lower, and wraps round.
    assert choose_core(2, cpus, {3}) == 2
    assert choose_core(0, cpus, {0}) == 3
    # Every core held: none, and the worker goes unpinned rather than share one.
    assert choose_core(3, cpus, {0, 1, 2, 3}) is None
    assert choose_core(1, (0, 1), {0, 1}) is None
    assert choose_core(1, (0, 1), {1}) == 0


def test_only_a_pinned_worker_holds_cores():
    """An unpinned worker may run anywhere, like any process: it holds nothing. A worker on some cores holds those."""
    cpus = (0, 1, 2, 3)
    assert held_cpus([frozenset(cpus)], cpus) == set()
    assert held_cpus([frozenset(range(8))], cpus) == set()  # allowed more than we are: not pinned either
    assert held_cpus([frozenset(cpus), frozenset({3}), frozenset({1, 2})], cpus) == {1, 2, 3}
    assert held_cpus([], cpus) == set()


async def _load(admin: httpx.AsyncClient, url: str) -> dict:
    """The demo loaded on the server whose admin API is at ``url``; its worker's status entry."""
    response = await admin.post(url + "/admin/load", json={"model": "demo"})
    assert response.status_code == 200, response.text
    return (await admin.get(url + "/admin/status")).json()["workers"][0]


@pytest.mark.skipif(len(allowed_cpus()) < 2, reason="needs two CPUs")
@bounded(180)
async def test_servers_on_one_machine_give_their_workers_different_cores(server, cache_dir, tmp_path):
    """Two servers' workers on a core each, never the same one, even loaded at the same moment. Once every core
    is held a further worker runs unpinned rather than halve another's speed; a server killed with SIGKILL holds
    nothing after (what is held is read from the live workers, not from claims that could outlive one)."""
    cpus = allowed_cpus()
    # Cores that mlxtrio workers outside this test hold (a server someone runs beside the suite) are not free.
    free = set(cpus) - held_cpus(other_workers_cpus().values(), cpus)
    assert len(free) >= 2, f"other mlxtrio workers hold all but {sorted(free)} of this machine's cores"
    second, _url, second_url, _log = await start_server(cache_dir, tmp_path)
    third = None
    try:
        async with httpx.AsyncClient(timeout=60) as admin:
            entries = {}

            async def load(name: str, url: str) -> None:
                entries[name] = await _load(admin, url)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(load, "first", server.admin_url)
                nursery.start_soon(load, "second", second_url)
            first_cpus, second_cpus = set(entries["first"]["cpus"]), set(entries["second"]["cpus"])
            assert len(first_cpus) == len(second_cpus) == 1
            assert first_cpus != second_cpus
            assert first_cpus | second_cpus <= free
            for name, held in (("first", first_cpus), ("second", second_cpus)):
                assert all(threads == held for threads in thread_cpus(entries[name]["pid"]))

            third, _url, third_url, _log = await start_server(cache_dir, tmp_path)
            entry = await _load(admin, third_url)
            if len(free) > 2:
                assert len(entry["cpus"]) == 1 and set(entry["cpus"]) <= free - first_cpus - second_cpus
            else:
                assert entry["cpus"] == []
                assert entry["scheduling"] == "normal"
                assert all(threads == set(cpus) for threads in thread_cpus(entry["pid"]))

            # SIGKILL the second server: its worker exits at once, and its core is free for the next worker.
            exited = os.pidfd_open(entries["second"]["pid"])
            try:
                second.kill()
                with trio.fail_after(5):
                    await trio.lowlevel.wait_readable(exited)
            finally:
                os.close(exited)
            assert (await admin.post(third_url + "/admin/unload", json={"model": "demo"})).status_code == 200
            entry = await _load(admin, third_url)
            assert len(entry["cpus"]) == 1 and not set(entry["cpus"]) & first_cpus
            if len(free) == 2:
                assert set(entry["cpus"]) == second_cpus
    finally:
        await kill_if_running(second)
        if third is not None:
            await kill_if_running(third)
