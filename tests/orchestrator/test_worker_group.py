"""A worker group's processes as one unit: any rank's exit ends them all, a stop leaves none, ports come and go with it.

The ranks are real processes (tests/orchestrator/fake_rank.py) that keep the seam's promises without MLX.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

import pytest
import trio

from mlxtrio import _protocol as p
from mlxtrio.orchestrator import _group, _process
from mlxtrio.orchestrator._group import GroupPorts, WorkerGroup

from ..helpers import bounded

FAKE_RANK = str(Path(__file__).with_name("fake_rank.py"))
# A base of our own: tests in parallel with a server's groups take other ports.
BASE = 30500
PORTS = 30900


def _config(hosts=("127.0.0.1", "127.0.0.1")) -> p.WorkerConfig:
    return p.WorkerConfig(
        model_id="big", source="local", location="/nowhere", cache_dir="/nowhere", memory_budget_bytes=1 << 30,
        prefill_step_size=512, decode_concurrency=4, prefill_batch_size=4, prefill_bucket=0, prompt_cache_bytes=0,
        chat_template=None, cpus=(), cpus_for_cpu_backend_only=False, image_max_pixels=1 << 20, blas_library=None,
        grammar_compile_timeout=5.0, task="generate",
        embedding=p.EmbeddingSettings(pooling=None, normalize=None, matryoshka=False, batch_tokens=8192, pass_seconds=6.0), group=p.GroupConfig(hosts=hosts, parallel="pipeline", backend="ring", ports=(), control_port=0),
    )


def fake_ranks(monkeypatch: pytest.MonkeyPatch, follower_mode: str) -> None:
    """Rank 0 and its followers run tests/orchestrator/fake_rank.py."""
    monkeypatch.setattr(_process, "worker_command", lambda config, spec: [sys.executable, FAKE_RANK, "leader", _json(config), spec])
    monkeypatch.setattr(
        _group, "follower_command", lambda config, rank, python: [sys.executable, FAKE_RANK, "follower", follower_mode, str(rank), _json(config)]
    )


def _json(config: p.WorkerConfig) -> str:
    import msgspec

    return msgspec.json.encode(config).decode()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def _started(nursery: trio.Nursery, held: GroupPorts, hosts=("127.0.0.1", "127.0.0.1")):
    """A group serving in ``nursery``, once it is Ready; (group, Ready, serve's end)."""
    group = await WorkerGroup.spawn(
        _config(hosts), environment=None, send_timeout=5.0, base_port=BASE, ssh="ssh", python=sys.executable, held=held
    )
    ready, served = trio.Event(), trio.Event()
    heard: list[p.ToOrchestrator] = []

    def report(message: p.ToOrchestrator) -> None:
        heard.append(message)
        if isinstance(message, p.Ready):
            ready.set()

    async def serve() -> None:
        await group.serve(report)
        served.set()

    nursery.start_soon(serve)
    await ready.wait()
    return group, heard[-1], served


def test_groups_take_ports_of_their_own_and_give_them_back():
    held = GroupPorts()
    hosts = ("127.0.0.1", "127.0.0.1")
    with socket.create_server(("127.0.0.1", PORTS + 1)):  # another program's: passed over
        first = held.take(PORTS, hosts)
        second = held.take(PORTS, ("127.0.0.1",) * 3)
    assert first == ((PORTS, PORTS + 2), PORTS + 3)
    assert second == ((PORTS + 4, PORTS + 5, PORTS + 6), PORTS + 7)
    held.give_back((*first[0], first[1]))
    assert held.held == {PORTS + 4, PORTS + 5, PORTS + 6, PORTS + 7}
    assert held.take(PORTS, hosts) == ((PORTS, PORTS + 1), PORTS + 2)
    # A remote host's port cannot be tried from here: only this machine's are.
    assert GroupPorts().take(PORTS, ("127.0.0.1", "192.0.2.9"))[0] == (PORTS, PORTS + 1)
    with pytest.raises(OSError, match="no free group ports"):
        held.take(PORTS, ("127.0.0.1",) * 300)


@bounded(10)
async def test_a_follower_killed_takes_the_group_down_and_names_it(monkeypatch, nursery):
    fake_ranks(monkeypatch, "stubborn")
    held = GroupPorts()
    group, ready, served = await _started(nursery, held)
    assert [(rank.rank, rank.host) for rank in ready.ranks] == [(0, "127.0.0.1"), (1, "127.0.0.1")]
    assert ready.memory_bytes == 3000 and len(held.held) == 3
    leader, follower = [rank.pid for rank in group.ranks()]
    assert leader == group.pid and all(rank.running for rank in group.ranks())
    os.kill(follower, signal.SIGKILL)
    with trio.fail_after(2):  # rank 0 stays up by itself: the group kills it
        await served.wait()
    exited = await group.reap()
    assert (exited.pid, exited.returncode, exited.cause) == (follower, -signal.SIGKILL, "crash")
    assert exited.reason == f"rank 1 (pid {follower}, 127.0.0.1): the model worker was killed by SIGKILL"
    await group.close(exited.reason)
    assert _gone(leader) and _gone(follower) and not group.running
    assert held.held == frozenset()


@bounded(10)
async def test_rank_0_gone_takes_the_followers_with_it(monkeypatch, nursery):
    fake_ranks(monkeypatch, "stubborn")
    group, _, served = await _started(nursery, GroupPorts(), hosts=("127.0.0.1",) * 3)
    pids = [rank.pid for rank in group.ranks()]
    os.kill(pids[0], signal.SIGKILL)
    with trio.fail_after(2):
        await served.wait()
    exited = await group.reap()
    assert exited.reason == f"rank 0 (pid {pids[0]}, 127.0.0.1): the model worker was killed by SIGKILL"
    await group.close(exited.reason)
    assert all(map(_gone, pids))


@bounded(10)
async def test_a_planned_stop_ends_every_rank_and_kills_one_that_stays(monkeypatch, nursery):
    monkeypatch.setattr(_process, "EXIT_WAIT", 0.5)
    for mode, statuses in (("obey", [0, 0, 0]), ("stubborn", [0, -signal.SIGKILL, -signal.SIGKILL])):
        fake_ranks(monkeypatch, mode)
        group, _, served = await _started(nursery, GroupPorts(), hosts=("127.0.0.1",) * 3)
        processes = [group._leader._process, *(follower.process for follower in group._followers)]
        await group.stop()
        await served.wait()
        await group.reap()
        await group.close("stopped")
        assert [process.returncode for process in processes] == statuses, mode


@bounded(10)
async def test_a_group_killed_for_cause_says_so(monkeypatch, nursery):
    fake_ranks(monkeypatch, "obey")
    group, _, served = await _started(nursery, GroupPorts())
    group.kill("hang", "the model worker made no progress")
    await served.wait()
    exited = await group.reap()
    assert (exited.cause, exited.reason) == ("hang", "the model worker made no progress")
    await group.close(exited.reason)
    assert not any(rank.running for rank in group.ranks())


@bounded(10)
async def test_a_rank_that_cannot_start_leaves_nothing(monkeypatch):
    fake_ranks(monkeypatch, "obey")
    monkeypatch.setattr(_group, "follower_command", lambda config, rank, python: ["/nonexistent/python"])
    held = GroupPorts()
    spawned = []
    real_spawn = _process.WorkerProcess.spawn.__func__

    async def spawn(cls, *args, **kwargs):
        spawned.append(await real_spawn(cls, *args, **kwargs))
        return spawned[-1]

    monkeypatch.setattr(_process.WorkerProcess, "spawn", classmethod(spawn))
    with pytest.raises(OSError):
        await WorkerGroup.spawn(_config(), environment=None, send_timeout=5.0, base_port=BASE, ssh="ssh", python="py", held=held)
    assert _gone(spawned[0].pid) and held.held == frozenset()


async def test_the_memory_budget_counts_the_ranks_on_this_machine_only(tmp_path):
    from mlxtrio.orchestrator import ModelEntry, ServedModel
    from mlxtrio.orchestrator._events import Started

    from ..helpers import make_config

    (tmp_path / "model.safetensors").write_bytes(bytes(1000))
    entry = ModelEntry("big", "local", str(tmp_path), "a group across two hosts")

    async def admit_load(served: ServedModel) -> None:
        raise AssertionError("not loaded here")

    config = make_config(tmp_path, tmp_path)
    served = ServedModel(entry, _config(("127.0.0.1", "192.0.2.9")), config=config, admit_load=admit_load)
    assert served.estimated_bytes == 500  # half the weights: one of its two ranks runs here
    served._handle(Started(1))
    ranks = (p.RankInfo(0, "127.0.0.1", 1, 700, "layers 1-1 of 2"), p.RankInfo(1, "192.0.2.9", 2, 900, "layers 0-0 of 2"))
    served._handle(p.Ready("big", 0.1, 1600, ranks=ranks))
    assert served.resident_bytes == 700 and served.statistics().memory_bytes == 1600


@bounded(10)
async def test_a_rank_on_another_host_starts_over_ssh_with_the_token_on_its_stdin(monkeypatch, nursery, caplog):
    fake_ranks(monkeypatch, "obey")
    monkeypatch.setattr(_group, "runs_here", lambda host: host == "127.0.0.1")
    ssh = f"{sys.executable} {Path(__file__).with_name('fake_ssh.py')}"
    group = await WorkerGroup.spawn(
        _config(("127.0.0.1", "192.0.2.9")), environment=None, send_timeout=5.0, base_port=BASE, ssh=ssh, python="/remote/python", held=GroupPorts()
    )
    ready = trio.Event()
    nursery.start_soon(group.serve, lambda message: ready.set() if isinstance(message, p.Ready) else None)
    await ready.wait()  # rank 0 took rank 1's token: it came through ssh's stdin, quoted config and all
    ssh_pid = group.ranks()[1].pid
    os.kill(ssh_pid, signal.SIGKILL)  # the connection to the other host ends
    exited = await group.reap()
    assert exited.reason == f"rank 1 (pid {ssh_pid}, 192.0.2.9): the model worker was killed by SIGKILL"
    await group.close(exited.reason)
