"""A real embedding worker for the tests: ``python -m mlxtrio.worker`` over a real channel, its messages read in order."""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import numpy as np
import trio

from mlxtrio import _protocol as p
from mlxtrio._config import Config
from mlxtrio.orchestrator import ModelCatalog, ModelEntry
from mlxtrio.orchestrator._process import WorkerProcess


def worker_config(cache_dir: Path, model: str, *, location: str = "", **embedding: object) -> p.WorkerConfig:
    """The worker config the catalog makes for a built-in ``model`` (or, with ``location``, a local one), ``embedding`` settings over its own."""
    entry = ModelEntry(model, "local" if location else model, location, "")
    config = ModelCatalog(Config.from_environment(env={})).worker_config(entry)
    config = msgspec.structs.replace(config, cache_dir=str(cache_dir))
    return msgspec.structs.replace(config, embedding=msgspec.structs.replace(config.embedding, **embedding))


class Worker:
    """A started worker: ``send`` to it, ``next`` of its messages (Pongs and heartbeats included, as they come)."""

    def __init__(self, process: WorkerProcess, messages: trio.MemoryReceiveChannel, ready: p.Ready) -> None:
        self.process = process
        self._messages = messages
        self.ready = ready

    async def send(self, message: p.ToWorker) -> None:
        await self.process.send(message)

    async def next(self) -> p.ToOrchestrator:
        with trio.fail_after(60):
            return await self._messages.receive()

    async def answer(self, request_id: int) -> p.Embedded | p.RequestFailed:
        """The next Embedded or RequestFailed, which must be ``request_id``'s (heartbeats passed over)."""
        while True:
            message = await self.next()
            if isinstance(message, (p.Embedded, p.RequestFailed)):
                assert message.request_id == request_id, message
                return message

    async def embed(self, *inputs: str | tuple[int, ...], request_id: int = 1, **options: object) -> np.ndarray:
        """The vectors of ``inputs``, asked for alone."""
        await self.send(p.Embed(request_id, inputs, **options))
        answer = await self.answer(request_id)
        assert isinstance(answer, p.Embedded), answer
        return vectors(answer)


def vectors(answer: p.Embedded) -> np.ndarray:
    return np.frombuffer(answer.vectors, dtype="<f4").reshape(-1, answer.dimensions)


class LoadFailedError(Exception):
    """The worker said ``LoadFailed`` (``args[0]``)."""


@asynccontextmanager
async def embed_worker(config: p.WorkerConfig, *, failpoints: str = "") -> AsyncIterator[Worker]:
    """The worker for ``config``, loaded (its Ready in ``ready``), stopped and reaped at the end."""
    environment = {**os.environ, "MLXTRIO_FAILPOINTS": failpoints}
    process = await WorkerProcess.spawn(config, environment=environment, send_timeout=30)
    sender, receiver = trio.open_memory_channel[p.ToOrchestrator](math.inf)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(process.serve, sender.send_nowait)
            with trio.fail_after(120):
                message = await receiver.receive()
                while isinstance(message, (p.Hello, p.Step)):
                    message = await receiver.receive()
            if isinstance(message, p.LoadFailed):
                nursery.cancel_scope.cancel()
            else:
                assert isinstance(message, p.Ready), message
                yield Worker(process, receiver, message)
                await process.stop()
        if isinstance(message, p.LoadFailed):
            raise LoadFailedError(message)
    finally:
        await process.reap()
        await process.close("the test is over")
