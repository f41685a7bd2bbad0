"""The intake: generation requests the server is taking in, and the followers each Generate tells the worker of.

A request is in the intake from its dispatch (its headers read, its key
checked) until its Generate goes out or it ends without one; it must leave
it on every path, or every batch would start late by a wait.
"""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from mlxtrio import ServerHandle
from mlxtrio import _protocol as p
from mlxtrio.orchestrator import Intake, IntakeStatistics
from mlxtrio.worker._demo import ensure_demo_model

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4, "temperature": 0}


async def _intake(admin: httpx.AsyncClient) -> dict:
    return (await admin.get("/admin/status")).json()["intake"]


async def _until_arriving(admin: httpx.AsyncClient, count: int) -> dict:
    """The intake once ``count`` requests are arriving (the server takes them in on its own time)."""
    with trio.fail_after(10):
        while (intake := await _intake(admin))["arriving"] != count:
            await trio.sleep(0.01)
    return intake


async def _stalled(server: ServerHandle) -> trio.SocketStream:
    """A chat request whose body never finishes: it stays in the intake until its client leaves."""
    host, port = server.openai_url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
    await stream.send_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"model": "demo", '
    )
    return stream


class _Sent(list):
    def __init__(self) -> None:
        super().__init__()
        self.arriving: list[int] = []


@pytest.fixture
async def sent(server: ServerHandle, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> list[p.Generate]:
    """The Generates the orchestrator sends the demo model's (real) worker, as they go.

    ``sent.arriving`` has the server's whole intake at each send.
    """
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200  # loaded
    worker = await server.state.supervisor.served_model("demo")
    process = worker._run.process  # noqa: SLF001
    messages = _Sent()
    send = process.send

    async def recording(message: p.ToWorker) -> None:
        if isinstance(message, p.Generate):
            messages.append(message)
            messages.arriving.append(server.state.supervisor.intake.arriving)
        await send(message)

    monkeypatch.setattr(process, "send", recording)
    return messages


async def test_each_generate_counts_the_requests_still_arriving_and_carries_its_choices(
    server: ServerHandle, client: httpx.AsyncClient, admin: httpx.AsyncClient, sent: list[p.Generate]
):
    handed_over = (await _until_arriving(admin, 0))["handed_over"]
    stream = await _stalled(server)
    await _until_arriving(admin, 1)
    response = await client.post("/v1/chat/completions", json={**CHAT, "n": 3})
    assert response.status_code == 200
    # One still arriving; the request's choices share its one Generate (one tokenization).
    assert [(message.followers, message.choices) for message in sent] == [(1, 3)]
    await stream.aclose()
    intake = await _until_arriving(admin, 0)
    assert intake["handed_over"] == handed_over + 1
    sent.clear()
    assert (await client.post("/v1/completions", json={"model": "demo", "prompt": "hi", "max_tokens": 2})).status_code == 200
    assert [message.followers for message in sent] == [0]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"model": "demo", "messages": ', 400),  # not JSON
        (b'{"model": "demo", "messages": [], "max_tokens": 4}', 400),  # invalid
        (b'{"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}', 404),
    ],
)
async def test_a_request_that_ends_without_a_generate_leaves_the_intake(
    client: httpx.AsyncClient, admin: httpx.AsyncClient, body: bytes, status: int
):
    before = await _intake(admin)
    response = await client.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status
    assert await _intake(admin) == before == {"arriving": 0, "handed_over": before["handed_over"]}


async def test_other_endpoints_are_not_counted(client: httpx.AsyncClient, admin: httpx.AsyncClient):
    before = await _intake(admin)
    assert (await client.get("/v1/models")).status_code == 200
    assert (await client.get("/health")).status_code == 200
    assert await _intake(admin) == before


@pytest.mark.parametrize("server_settings", [{"api_keys": ("secret",)}])
async def test_a_request_refused_at_the_door_is_never_counted(server: ServerHandle, admin: httpx.AsyncClient):
    before = await _intake(admin)
    async with httpx.AsyncClient(base_url=server.openai_url) as anonymous:
        assert (await anonymous.post("/v1/chat/completions", json=CHAT)).status_code == 401
    assert await _intake(admin) == before


def test_an_arrival_ends_once_whichever_way():
    intake = Intake()
    first, second, third = intake.arrive(), intake.arrive(), intake.arrive()
    assert intake.statistics() == IntakeStatistics(arriving=3, handed_over=0)
    assert first.hand_over() == 2  # the others still arriving
    first.leave()  # its request's end, after its Generate went out
    assert first.hand_over() == 2  # a second choice's Generate: nothing changes
    second.leave()
    second.leave()
    assert intake.statistics() == IntakeStatistics(arriving=1, handed_over=1)
    assert third.hand_over() == 0
    assert intake.statistics() == IntakeStatistics(arriving=0, handed_over=2)


def test_arrivals_count_for_their_model_once_identified_and_for_every_model_before():
    intake = Intake()
    unread, for_a, for_b, also_a = intake.arrive(), intake.arrive(), intake.arrive(), intake.arrive()
    for_a.identify("a")
    for_b.identify("b")
    also_a.identify("a")
    also_a.identify("b")  # once only
    assert (intake.expected("a"), intake.expected("b"), intake.expected(None), intake.arriving) == (3, 2, 4, 4)
    assert for_a.hand_over() == 2  # also_a, and the unread one that may be for "a"
    for_b.leave()
    assert (intake.expected("a"), intake.expected("b"), intake.arriving) == (2, 1, 2)
    unread.identify("b")
    assert also_a.hand_over() == 0
    assert unread.hand_over() == 0
    assert intake.statistics() == IntakeStatistics(arriving=0, handed_over=3)


async def test_a_request_for_another_model_is_not_counted_once_its_body_says_so(
    server: ServerHandle, client: httpx.AsyncClient, admin: httpx.AsyncClient, sent: list[p.Generate],
    cache_dir: Path, tmp_path: Path,
):
    """A request waiting for another model's load is no follower of the demo's requests."""
    other = "test/tiny-other"
    snapshot = tmp_path / "hf-hub" / ("models--" + other.replace("/", "--")) / "snapshots" / "0123abcd"
    shutil.copytree(ensure_demo_model(cache_dir), snapshot)

    async def loading() -> bool:
        workers = (await admin.get("/admin/status")).json()["workers"]
        return any(worker["model"] == other and worker["state"] == "loading" for worker in workers)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(client.post, "/v1/completions", json={"model": other, "prompt": "hi", "max_tokens": 2}))
        with trio.fail_after(30):
            while not await loading():
                await trio.sleep(0.01)
        sent.clear()
        sent.arriving.clear()
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        # The other model's request was arriving still (its load under way), and not counted.
        assert sent.arriving == [1]
        assert [message.followers for message in sent] == [0]
