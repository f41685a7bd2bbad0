"""The supervisor: one ServedModel per model, each with its lifetime task in the supervisor's nursery.

It also decides which models may be resident at once: at most
``max_loaded_models`` workers, whose weights fit the memory budget together.
Loading one more first unloads the least recently used idle ones; if the
others are all busy, the load is refused (unavailable, with a retry-after) rather than
taking memory the machine does not have.
"""

from __future__ import annotations

import attrs
import trio

from .._config import Config
from .._errors import ErrorKind, ServerError
from ._catalog import ModelCatalog
from ._intake import Intake
from ._lifecycle import ModelStatus
from ._served_model import ServedModel

__all__ = ["Supervisor"]


class Supervisor:
    """Finds or starts the served model for a model id; answers status; stops them all at the end."""

    def __init__(self, config: Config, catalog: ModelCatalog) -> None:
        self._config = config
        self.catalog = catalog
        # Generation requests the HTTP side is still taking in (a hint for the workers).
        self.intake = Intake()
        self._models: dict[str, ServedModel] = {}
        self._nursery: trio.Nursery | None = None
        # One load decision at a time: two new models must not both see the same free room.
        self._room = trio.Lock()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own every worker's lifetime task until cancelled (which kills any worker left)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def served_model(self, model_id: str) -> ServedModel:
        """The served model for ``model_id`` (not necessarily loaded); a not_found ServerError for unknown ids."""
        served = self._models.get(model_id)
        if served is None:
            entry = self.catalog.resolve(model_id)
            # A short name gives its model's entry: one served model, whichever name a request uses.
            served = self._models.get(entry.id)
            if served is None:
                served = ServedModel(
                    entry,
                    self.catalog.worker_config(entry, slot=len(self._models)),
                    config=self._config,
                    admit_load=self._admit_load,
                )
                self._models[entry.id] = served
                assert self._nursery is not None, "the supervisor is not running"
                await self._nursery.start(served.run)
        return served

    async def _admit_load(self, incoming: ServedModel) -> None:
        """Make room for ``incoming`` (evicting least recently used idle models), then let it load."""
        config = self._config
        async with self._room:
            if incoming.resident:
                return  # someone else started it while we waited
            need = incoming.estimated_bytes
            if need > config.memory_budget_bytes:
                raise ServerError(
                    ErrorKind.OUT_OF_MEMORY,
                    f"model {incoming.model_id!r} has {need} bytes of weights; the memory budget is "
                    f"{config.memory_budget_bytes} bytes",
                    code="model_too_large",
                )
            while True:
                others = [served for served in self._models.values() if served is not incoming and served.resident]
                used = sum(served.resident_bytes for served in others)
                if len(others) < config.max_loaded_models and used + need <= config.memory_budget_bytes:
                    break
                idle = sorted((served for served in others if served.idle), key=lambda served: served.last_used)
                if not idle:
                    raise ServerError(
                        ErrorKind.UNAVAILABLE,
                        f"cannot load {incoming.model_id!r} now: {len(others)} other models are loaded and busy "
                        f"(at most {config.max_loaded_models} at once, {config.memory_budget_bytes} bytes in all)",
                        code="no_room",
                        retry_after=1.0,
                    )
                await idle[0].unload(f"evicted to make room for {incoming.model_id!r} (least recently used)")
            incoming.begin_load()

    def loaded_models(self) -> list[ServedModel]:
        return list(self._models.values())

    async def unload_all(self) -> None:
        """Stop every worker gracefully (Shutdown, then a bounded wait, then SIGKILL)."""
        async with trio.open_nursery() as nursery:
            for served in self._models.values():
                nursery.start_soon(served.unload)

    def statistics(self) -> list[ModelStatus]:
        statuses = [served.statistics() for served in self._models.values()]
        default = self.catalog.default_model
        if default not in self._models:
            statuses.insert(0, ModelStatus(model=default))
        return statuses

    def describe(self, *, ipc: bool = True) -> list[dict]:
        """Each model's status, as JSON; ``ipc=False`` leaves out the channel's counters, which change with every token."""
        fields = attrs.fields(ModelStatus)
        keep = None if ipc else attrs.filters.exclude(fields.channel, fields.routes)
        return [attrs.asdict(status, filter=keep) for status in self.statistics()]
