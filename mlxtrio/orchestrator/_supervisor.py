"""The supervisor: one ModelWorker per model, each with its lifetime task in the supervisor's nursery."""

from __future__ import annotations

import attrs
import trio

from .._config import Config
from ._catalog import ModelCatalog
from ._worker import ModelWorker, WorkerStatus

__all__ = ["Supervisor"]


class Supervisor:
    """Finds or starts the worker for a model id; answers status; stops them all at the end."""

    def __init__(self, config: Config, catalog: ModelCatalog) -> None:
        self._config = config
        self.catalog = catalog
        self._workers: dict[str, ModelWorker] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own every worker's lifetime task until cancelled (which kills any worker left)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def worker(self, model_id: str) -> ModelWorker:
        """The worker for ``model_id`` (not necessarily loaded); ServerError 404 for unknown ids."""
        worker = self._workers.get(model_id)
        if worker is None:
            entry = self.catalog.resolve(model_id)
            worker = self._workers.get(model_id)  # resolve() does not checkpoint, but be plain about it
            if worker is None:
                worker = ModelWorker(entry, self.catalog.worker_config(entry), config=self._config)
                self._workers[model_id] = worker
                assert self._nursery is not None, "the supervisor is not running"
                await self._nursery.start(worker.run)
        return worker

    def loaded_workers(self) -> list[ModelWorker]:
        return list(self._workers.values())

    async def unload_all(self) -> None:
        """Stop every worker gracefully (Shutdown, then a bounded wait, then SIGKILL)."""
        async with trio.open_nursery() as nursery:
            for worker in self._workers.values():
                nursery.start_soon(worker.unload)

    def statistics(self) -> list[WorkerStatus]:
        statuses = [worker.statistics() for worker in self._workers.values()]
        default = self.catalog.default_model
        if default not in self._workers:
            statuses.insert(
                0,
                WorkerStatus(
                    model=default, pid=None, state="unloaded", restarts=0, loads=0, loaded_at=None, last_used_at=None,
                    memory_bytes=None, engine=None, active_requests=0, queued_requests=0, failure=None, retry_at=None,
                ),
            )
        return statuses

    def describe(self) -> list[dict]:
        return [attrs.asdict(status) for status in self.statistics()]
