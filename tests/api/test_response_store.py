"""The Responses API's conversation store: SQLite under the state directory, by owner, bounded, private, durable.

Each test drives ``ResponseStore`` in a temporary directory, with its clock
moved by hand where age matters.
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from mlxtrio import ErrorKind, ServerError
from mlxtrio._config import Config
from mlxtrio.api.responses import _store
from mlxtrio.api.responses._store import FILE_NAME, InputItemsPage, ResponseStore, state_directory

DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def make_store(directory: Path, *, max_bytes: int = 1 << 20, max_age_days: float = 30.0, clock: Clock | None = None) -> ResponseStore:
    return ResponseStore(directory, max_bytes=max_bytes, max_age_days=max_age_days, clock=clock or Clock())


def items(count: int, *, size: int = 10) -> list[dict]:
    return [{"id": f"msg_{n}", "type": "message", "text": "x" * size} for n in range(count)]


async def put(store: ResponseStore, response_id: str, *, owner: str = "alice", size: int = 10, **options: object) -> bool:
    return await store.put(
        owner,
        response_id,
        response={"id": response_id, "object": "response", "text": "y" * size},
        input_items=options.pop("input_items", items(2)),
        history=[{"role": "user", "content": "hello"}],
        **options,
    )


def check_consistent(path: Path) -> int:
    """The database's totals match its rows and no input item outlives its response; how many entries it has."""
    database = sqlite3.connect(path)
    try:
        totals = database.execute("SELECT entries, bytes FROM totals").fetchone()
        rows = database.execute("SELECT count(*), coalesce(sum(bytes), 0) FROM responses").fetchone()
        orphans = database.execute("SELECT count(*) FROM input_items WHERE response NOT IN (SELECT seq FROM responses)").fetchone()[0]
        assert database.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        database.close()
    assert totals == rows and orphans == 0
    return rows[0]


async def stored_ids(store: ResponseStore, response_ids: list[str], owner: str = "alice") -> list[str]:
    return [response_id for response_id in response_ids if await store.get(owner, response_id) is not None]


async def test_a_put_response_is_read_back_whole(tmp_path):
    store = make_store(tmp_path / "state")
    assert await store.put(
        "alice",
        "resp_1",
        response={"id": "resp_1", "output": [{"type": "message", "content": [{"type": "output_text", "text": "hi"}]}]},
        input_items=items(3),
        history=[{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}],
        previous_response_id="resp_0",
    )
    stored = await store.get("alice", "resp_1")
    assert stored.response["output"][0]["content"][0]["text"] == "hi"
    assert stored.input_items == items(3)
    assert stored.history[1] == {"role": "assistant", "content": "hi"}
    assert stored.previous_response_id == "resp_0"
    assert stored.created_at == store.clock()
    assert await store.get("alice", "resp_2") is None


async def test_one_owner_never_sees_another_owners_response(tmp_path):
    store = make_store(tmp_path)
    assert await put(store, "resp_1", owner="alice")
    assert await store.get("bob", "resp_1") is None
    assert await store.get("", "resp_1") is None
    assert await store.input_items("bob", "resp_1") is None
    assert not await store.delete("bob", "resp_1")
    assert await store.get("alice", "resp_1") is not None
    # The same id under another owner is another entry; neither replaces the other.
    assert await put(store, "resp_1", owner="bob", size=99)
    assert (await store.get("alice", "resp_1")).response["text"] == "y" * 10
    assert (await store.get("bob", "resp_1")).response["text"] == "y" * 99
    assert await store.delete("alice", "resp_1")
    assert await store.get("alice", "resp_1") is None
    assert await store.get("bob", "resp_1") is not None
    assert not await store.delete("alice", "resp_1")


async def test_input_items_page_both_ways_from_a_cursor(tmp_path):
    store = make_store(tmp_path)
    assert await put(store, "resp_1", input_items=items(5))
    ids = lambda page: [item["id"] for item in page.items]  # noqa: E731
    first = await store.input_items("alice", "resp_1", order="asc", limit=2)
    assert ids(first) == ["msg_0", "msg_1"] and first.has_more
    second = await store.input_items("alice", "resp_1", order="asc", limit=2, after="msg_1")
    assert ids(second) == ["msg_2", "msg_3"] and second.has_more
    last = await store.input_items("alice", "resp_1", order="asc", limit=2, after="msg_3")
    assert ids(last) == ["msg_4"] and not last.has_more
    newest = await store.input_items("alice", "resp_1")  # OpenAI's default: desc, 20
    assert ids(newest) == ["msg_4", "msg_3", "msg_2", "msg_1", "msg_0"] and not newest.has_more
    older = await store.input_items("alice", "resp_1", order="desc", limit=1, after="msg_2")
    assert ids(older) == ["msg_1"] and older.has_more
    assert await store.input_items("alice", "resp_1", after="msg_unknown") == InputItemsPage(items=[], has_more=False)
    with pytest.raises(ValueError, match="limit"):
        await store.input_items("alice", "resp_1", limit=0)
    with pytest.raises(ValueError, match="id"):
        await put(store, "resp_2", input_items=[{"type": "message"}])


async def test_the_oldest_entries_are_evicted_first_to_stay_within_the_byte_bound(tmp_path):
    probe = make_store(tmp_path / "probe")
    assert await put(probe, "resp_0", size=900)
    one = (await probe.statistics())["bytes"]
    store = make_store(tmp_path / "store", max_bytes=3 * one + one // 2)  # room for three
    for n in range(6):
        assert await put(store, f"resp_{n}", size=900)
    # Reading an old entry does not make it newer: eviction is by age of storing.
    assert await stored_ids(store, [f"resp_{n}" for n in range(6)]) == ["resp_3", "resp_4", "resp_5"]
    assert await put(store, "resp_6", size=900)
    statistics = await store.statistics()
    kept = await stored_ids(store, [f"resp_{n}" for n in range(7)])
    assert kept == ["resp_4", "resp_5", "resp_6"]
    assert statistics["entries"] == 3 and statistics["evicted"] == 4
    assert statistics["bytes"] == 3 * one


async def test_an_entry_larger_than_the_bound_is_not_stored_and_evicts_nothing(tmp_path):
    store = make_store(tmp_path, max_bytes=3000)
    assert await put(store, "resp_small", size=100)
    assert not await put(store, "resp_huge", size=5000)
    assert await store.get("alice", "resp_huge") is None
    assert await store.get("alice", "resp_small") is not None
    assert (await store.statistics())["too_large"] == 1


async def test_entries_past_the_age_bound_are_gone_at_once_and_removed_on_put_and_at_open(tmp_path):
    clock = Clock()
    store = make_store(tmp_path, max_age_days=2, clock=clock)
    assert await put(store, "resp_old")
    clock.now += 1.5 * DAY
    assert await put(store, "resp_newer")
    clock.now += 0.75 * DAY  # resp_old is 2.25 days old, resp_newer 0.75
    assert await store.get("alice", "resp_old") is None
    assert await store.input_items("alice", "resp_old") is None
    assert not await store.delete("alice", "resp_old")
    assert await store.get("alice", "resp_newer") is not None
    assert (await store.statistics())["entries"] == 2  # read past, not yet removed
    assert await put(store, "resp_newest")
    assert (await store.statistics())["entries"] == 2
    assert store.expired == 1
    await store.aclose()
    clock.now += 1.5 * DAY  # resp_newer is 2.25 days old
    reopened = make_store(tmp_path, max_age_days=2, clock=clock)
    assert await reopened.get("alice", "resp_newest") is not None
    assert reopened.expired == 1
    assert (await reopened.statistics())["entries"] == 1


async def test_the_files_are_the_owners_alone_whatever_the_umask(tmp_path):
    directory = tmp_path / "new" / "state"
    store = make_store(directory)
    previous = os.umask(0)
    try:
        assert await put(store, "resp_1")
        names = sorted(path.name for path in directory.iterdir())
        modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in directory.iterdir()}
        directory_mode = stat.S_IMODE(directory.stat().st_mode)
    finally:
        os.umask(previous)
    assert names == [FILE_NAME, f"{FILE_NAME}-shm", f"{FILE_NAME}-wal"]
    assert modes == dict.fromkeys(names, 0o600)
    assert directory_mode == 0o700


async def test_a_database_left_readable_by_others_is_made_private(tmp_path):
    store = make_store(tmp_path)
    assert await put(store, "resp_1")
    await store.aclose()
    (tmp_path / FILE_NAME).chmod(0o644)
    reopened = make_store(tmp_path)
    assert await reopened.get("alice", "resp_1") is not None
    assert stat.S_IMODE((tmp_path / FILE_NAME).stat().st_mode) == 0o600


async def test_a_symlink_planted_at_the_databases_path_is_never_followed(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / FILE_NAME).symlink_to(target)
    store = make_store(tmp_path / "state")
    assert not await put(store, "resp_1")
    with pytest.raises(ServerError):
        await store.get("alice", "resp_1")
    assert target.read_bytes() == b""


async def test_nothing_is_stored_or_created_when_the_byte_bound_is_zero(tmp_path):
    store = make_store(tmp_path / "state", max_bytes=0)
    assert not store.enabled
    assert not await put(store, "resp_1")
    assert await store.get("alice", "resp_1") is None
    assert await store.input_items("alice", "resp_1") is None
    assert not await store.delete("alice", "resp_1")
    assert (await store.statistics())["enabled"] is False
    assert not (tmp_path / "state").exists()


async def test_responses_survive_a_restart(tmp_path):
    store = make_store(tmp_path)
    for n in range(3):
        assert await put(store, f"resp_{n}")
    assert await store.delete("alice", "resp_1")
    await store.aclose()
    reopened = make_store(tmp_path)
    assert await stored_ids(reopened, ["resp_0", "resp_1", "resp_2"]) == ["resp_0", "resp_2"]
    assert (await reopened.input_items("alice", "resp_2")).items == items(2)[::-1]
    assert (await reopened.statistics())["entries"] == 2


async def test_statistics_open_nothing(tmp_path):
    store = make_store(tmp_path / "state")
    statistics = await store.statistics()
    assert statistics["entries"] is None and statistics["path"] == str(tmp_path / "state" / FILE_NAME)
    assert not (tmp_path / "state").exists()
    assert await put(store, "resp_1")
    assert (await store.statistics())["entries"] == 1
    await store.aclose()
    (tmp_path / "state" / FILE_NAME).unlink()
    assert (await store.statistics())["entries"] is None
    assert not (tmp_path / "state" / FILE_NAME).exists()


async def test_many_tasks_put_at_once_one_thread_at_a_time(tmp_path, monkeypatch):
    store = make_store(tmp_path, max_bytes=1 << 30)
    inside, most = [0], [0]
    lock = threading.Lock()
    original = _store._put

    def counting_put(*args: object) -> bool:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            return original(*args)
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(_store, "_put", counting_put)
    results = {}

    async def one(n: int) -> None:
        results[n] = await put(store, f"resp_{n}", owner=f"owner_{n % 3}", input_items=items(n % 5))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for n in range(60):
                nursery.start_soon(one, n)
    assert all(results[n] for n in range(60))
    assert most[0] == 1
    assert (await store.statistics())["entries"] == 60
    check_consistent(tmp_path / FILE_NAME)
    for n in range(60):
        stored = await store.get(f"owner_{n % 3}", f"resp_{n}")
        assert stored.response["id"] == f"resp_{n}" and stored.input_items == items(n % 5)


async def test_two_servers_sharing_a_state_directory_share_the_store_safely(tmp_path):
    first, second = make_store(tmp_path, max_bytes=40_000), make_store(tmp_path, max_bytes=40_000)

    async def puts(store: ResponseStore, name: str) -> None:
        for n in range(40):
            assert await put(store, f"resp_{name}_{n}", size=500, input_items=items(3))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for name, store in (("a", first), ("b", second), ("c", first), ("d", second)):
                nursery.start_soon(puts, store, name)
    assert await put(second, "resp_b_last")
    assert await first.get("alice", "resp_b_last") is not None
    assert await put(first, "resp_a_last")
    assert await second.get("alice", "resp_a_last") is not None
    assert (await first.statistics())["bytes"] <= 40_000
    await first.aclose()
    await second.aclose()
    assert 0 < check_consistent(tmp_path / FILE_NAME) < 160


_KEEPS_PUTTING = """
import sys, trio
from pathlib import Path
from mlxtrio.api.responses._store import ResponseStore

async def main():
    store = ResponseStore(Path(sys.argv[1]), max_bytes=200_000, max_age_days=30)
    for n in range(1_000_000):
        items = [{"id": f"msg_{k}", "text": "x" * 300} for k in range(5)]
        await store.put("alice", f"resp_{n}", response={"id": f"resp_{n}", "text": "y" * 2000}, input_items=items, history=items)
        if n == 100:
            print("putting", flush=True)

trio.run(main)
"""


async def test_a_server_killed_while_storing_leaves_a_whole_store(tmp_path):
    with subprocess.Popen([sys.executable, "-c", _KEEPS_PUTTING, str(tmp_path)], stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}) as process:
        try:
            assert await trio.to_thread.run_sync(process.stdout.readline) == b"putting\n"
        finally:
            process.kill()
    assert check_consistent(tmp_path / FILE_NAME) > 0
    reopened = make_store(tmp_path)
    assert await reopened.put("alice", "resp_after", response={}, input_items=[], history=[])
    assert (await reopened.statistics())["bytes"] <= 200_000
    await reopened.aclose()
    check_consistent(tmp_path / FILE_NAME)


async def test_a_cancelled_caller_waits_for_its_transaction_and_the_store_stays_whole(tmp_path, monkeypatch):
    store = make_store(tmp_path)
    assert await put(store, "resp_before")
    entered, release = threading.Event(), threading.Event()
    original = _store._put

    def held_put(*args: object) -> bool:
        entered.set()
        release.wait(30)
        return original(*args)

    monkeypatch.setattr(_store, "_put", held_put)
    left = []

    async def cancelled_put(scope: trio.CancelScope, response_id: str) -> None:
        with scope:
            await put(store, response_id)
        left.append(response_id)

    first, queued = trio.CancelScope(), trio.CancelScope()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancelled_put, first, "resp_held")
            await trio.to_thread.run_sync(entered.wait)
            nursery.start_soon(cancelled_put, queued, "resp_queued")
            await trio.testing.wait_all_tasks_blocked()
            first.cancel()
            queued.cancel()
            await trio.testing.wait_all_tasks_blocked()
            # The queued put, waiting for the connection, leaves at once; the running one waits for its thread.
            assert left == ["resp_queued"]
            release.set()
    assert left == ["resp_queued", "resp_held"]
    monkeypatch.setattr(_store, "_put", original)
    assert await stored_ids(store, ["resp_before", "resp_held", "resp_queued"]) == ["resp_before", "resp_held"]
    assert await put(store, "resp_after")
    assert (await store.statistics())["entries"] == 3


async def test_a_file_that_is_no_database_is_moved_aside_and_the_store_starts_empty(tmp_path, caplog):
    (tmp_path / FILE_NAME).write_bytes(b"not a database at all " * 200)
    store = make_store(tmp_path)
    with caplog.at_level(logging.WARNING, logger="mlxtrio.api"):
        assert await store.get("alice", "resp_1") is None
        assert await put(store, "resp_1")
    assert (tmp_path / f"{FILE_NAME}.unreadable").read_bytes().startswith(b"not a database")
    assert "moved aside" in caplog.text and "starting empty" in caplog.text
    assert store.set_aside == 1
    assert await store.get("alice", "resp_1") is not None


async def test_another_programs_database_is_moved_aside_not_used(tmp_path, caplog):
    foreign = sqlite3.connect(tmp_path / FILE_NAME)
    foreign.execute("CREATE TABLE notes (text TEXT)")
    foreign.execute("INSERT INTO notes VALUES ('mine')")
    foreign.commit()
    foreign.close()
    store = make_store(tmp_path)
    with caplog.at_level(logging.WARNING, logger="mlxtrio.api"):
        assert await put(store, "resp_1")
    assert "another program's SQLite database" in caplog.text
    kept = sqlite3.connect(tmp_path / f"{FILE_NAME}.unreadable")
    assert kept.execute("SELECT text FROM notes").fetchall() == [("mine",)]
    kept.close()
    assert await store.get("alice", "resp_1") is not None


async def test_another_schema_version_is_moved_aside(tmp_path, caplog):
    store = make_store(tmp_path)
    assert await put(store, "resp_1")
    await store.aclose()
    other = sqlite3.connect(tmp_path / FILE_NAME)
    other.execute("PRAGMA user_version = 99")
    other.close()
    reopened = make_store(tmp_path)
    with caplog.at_level(logging.WARNING, logger="mlxtrio.api"):
        assert await reopened.get("alice", "resp_1") is None
    assert "schema version 99" in caplog.text


async def test_a_database_damaged_inside_is_moved_aside_when_read(tmp_path, caplog):
    store = make_store(tmp_path)
    for n in range(40):
        assert await put(store, f"resp_{n}", size=2000)
    await store.aclose()
    path = tmp_path / FILE_NAME
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 8 * page
    data[2 * page :] = random.Random(25).randbytes(len(data) - 2 * page)  # the header and the schema's page stay whole
    path.write_bytes(bytes(data))
    reopened = make_store(tmp_path)
    with caplog.at_level(logging.WARNING, logger="mlxtrio.api"):
        assert await reopened.get("alice", "resp_3") is None
        assert await put(reopened, "resp_new")
    assert "cannot be read" in caplog.text
    assert (tmp_path / f"{FILE_NAME}.unreadable").exists()
    assert await reopened.get("alice", "resp_new") is not None


async def test_a_store_that_cannot_be_opened_fails_reads_skips_puts_and_recovers(tmp_path, caplog):
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    store = make_store(blocker)
    with caplog.at_level(logging.ERROR, logger="mlxtrio.api"):
        assert not await put(store, "resp_1")
        with pytest.raises(ServerError) as failure:
            await store.get("alice", "resp_1")
    assert failure.value.kind is ErrorKind.INTERNAL
    assert str(blocker) not in failure.value.message  # paths stay in the log
    assert caplog.text.count("cannot be used") == 1  # once, not per request
    blocker.unlink()
    assert await put(store, "resp_1")
    assert await store.get("alice", "resp_1") is not None
    assert store.failures == 2


@pytest.mark.parametrize(("size", "count", "item_size"), [(4000, 3, 1000), (100, 20, 10)], ids=["large", "small"])
async def test_the_file_stays_near_the_byte_bound_under_churn(tmp_path, size, count, item_size):
    bound = 256 * 1024
    store = make_store(tmp_path, max_bytes=bound)
    for n in range(600):
        assert await put(store, f"resp_{n}", size=size, input_items=items(count, size=item_size))
    assert store.evicted > 0
    await store.aclose()  # the last connection's close checkpoints the WAL into the file
    assert (tmp_path / FILE_NAME).stat().st_size < 1.5 * bound
    assert not (tmp_path / f"{FILE_NAME}-wal").exists()


async def test_space_freed_by_a_large_eviction_is_given_back_to_the_file_system(tmp_path):
    bound = 256 * 1024
    store = make_store(tmp_path, max_bytes=bound)
    for n in range(30):
        assert await put(store, f"resp_{n}", size=8000)
    assert await put(store, "resp_large", size=bound - 4096)  # evicts all thirty
    assert store.evicted == 30
    await store.aclose()
    assert (tmp_path / FILE_NAME).stat().st_size < 1.25 * bound


def test_the_bounds_and_the_state_directory_come_from_the_config(tmp_path):
    config = Config.from_environment({"MLX_CACHE_DIR": str(tmp_path)})
    assert (config.responses_store_bytes, config.responses_store_days) == (256 * 1024 * 1024, 30.0)
    assert state_directory(config) == tmp_path / "state"
    config = Config.from_environment(
        {"MLX_CACHE_DIR": str(tmp_path), "MLX_RESPONSES_STORE_BYTES": "0", "MLX_RESPONSES_STORE_DAYS": "0.5", "MLX_STATE_DIR": str(tmp_path / "s")}
    )
    store = ResponseStore.from_config(config)
    assert (store.directory, store.max_bytes, store.max_age_days, store.enabled) == (tmp_path / "s", 0, 0.5, False)
    for variable, value in (("MLX_RESPONSES_STORE_BYTES", "-1"), ("MLX_RESPONSES_STORE_DAYS", "0")):
        with pytest.raises(ValueError, match=variable.removeprefix("MLX_").lower()):
            Config.from_environment({"MLX_CACHE_DIR": str(tmp_path), variable: value})
