"""Which model ids may be served, and where each one's weights come from.

The only doors to the filesystem: the operator's configured model (a
directory or a repo id), the built-in demo, and repo ids present in the local
Hugging Face cache (or fetched, when the operator allows downloads). A model
id in a request is never used as a path: a repo id is checked against a
strict pattern and mapped to its cache directory, and the resolved files
must lie inside the cache.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import attrs

from .._config import Config, ModelSettings
from .._errors import ErrorKind, ServerError
from .._models import weights_size
from .._protocol import WorkerConfig

__all__ = ["DEMO_MODEL_ID", "ModelCatalog", "ModelEntry"]

DEMO_MODEL_ID = "demo"
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


@attrs.frozen
class ModelEntry:
    id: str
    source: str  # "demo", "local", "hub"
    location: str
    description: str
    # Per-model settings from the config file, for an alias.
    settings: ModelSettings | None = None

    @property
    def weights_bytes(self) -> int:
        """The weight files' size, where they are on disk already (0: not known before loading)."""
        return weights_size(Path(self.location)) if self.source == "local" else 0


class ModelCatalog:
    def __init__(self, config: Config) -> None:
        self._config = config

    @property
    def default_model(self) -> str:
        return self._config.model or DEMO_MODEL_ID

    def _cached_snapshot(self, repo_id: str) -> Path | None:
        if not _REPO_ID.match(repo_id) or ".." in repo_id:
            return None
        hub = self._config.hf_hub_cache
        repo_dir = hub / ("models--" + repo_id.replace("/", "--"))
        ref = repo_dir / "refs" / "main"
        snapshots = repo_dir / "snapshots"
        candidates = []
        if ref.is_file():
            candidates.append(snapshots / ref.read_text().strip())
        if snapshots.is_dir():
            candidates.extend(sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True))
        hub_real = os.path.realpath(hub)
        for snapshot in candidates:
            config = snapshot / "config.json"
            if not config.is_file():
                continue
            # Snapshot files are links into blobs/; none may lead out of the cache.
            if os.path.commonpath([hub_real, os.path.realpath(config)]) != hub_real:
                continue
            return snapshot
        return None

    def _alias(self, settings: ModelSettings) -> ModelEntry:
        """An alias from the config file: the operator's path or repo id, under the alias's name."""
        target = settings.path
        path = Path(target).expanduser()
        if path.is_dir():
            return ModelEntry(settings.name, "local", str(path.resolve()), f"alias for {target}", settings)
        snapshot = self._cached_snapshot(target)
        if snapshot is not None:
            return ModelEntry(settings.name, "local", str(snapshot), f"alias for {target} (Hugging Face cache)", settings)
        if self._config.allow_downloads and _REPO_ID.match(target):
            return ModelEntry(settings.name, "hub", target, f"alias for {target} (to download)", settings)
        raise ServerError(
            ErrorKind.NOT_FOUND,
            f"the model {settings.name!r} is an alias for {target!r}, which is neither a directory nor in the "
            "Hugging Face cache (and downloads are off)",
            code="model_not_found",
            param="model",
        )

    def resolve(self, model_id: str) -> ModelEntry:
        """The entry for ``model_id``, or a ServerError (not_found)."""
        if model_id == DEMO_MODEL_ID:
            return ModelEntry(DEMO_MODEL_ID, "demo", "", "built-in demo model: random weights, nonsense text")
        alias = self._config.model_settings(model_id)
        if alias is not None:
            return self._alias(alias)
        if self._config.model is not None and model_id == self._config.model:
            path = Path(model_id).expanduser()
            if path.is_dir():
                return ModelEntry(model_id, "local", str(path.resolve()), "configured model (local directory)")
            snapshot = self._cached_snapshot(model_id)
            if snapshot is not None:
                return ModelEntry(model_id, "local", str(snapshot), "configured model (Hugging Face cache)")
            if self._config.allow_downloads and _REPO_ID.match(model_id):
                return ModelEntry(model_id, "hub", model_id, "configured model (to download)")
            raise ServerError(
                ErrorKind.NOT_FOUND,
                f"the configured model {model_id!r} is neither a directory nor in the Hugging Face cache "
                "(and downloads are off)",
                code="model_not_found",
                param="model",
            )
        snapshot = self._cached_snapshot(model_id)
        if snapshot is not None:
            return ModelEntry(model_id, "local", str(snapshot), "Hugging Face cache")
        if self._config.allow_downloads and _REPO_ID.match(model_id) and ".." not in model_id:
            return ModelEntry(model_id, "hub", model_id, "Hugging Face Hub (to download)")
        raise ServerError(ErrorKind.NOT_FOUND, f"the model {model_id!r} does not exist", code="model_not_found", param="model")

    def list(self) -> list[ModelEntry]:
        entries = [self.resolve(DEMO_MODEL_ID)]
        for alias in self._config.models:
            try:
                entries.append(self._alias(alias))
            except ServerError:
                pass  # a target that is not there (yet): not offered
        aliases = {alias.name for alias in self._config.models}
        if self._config.model is not None and self._config.model not in aliases | {DEMO_MODEL_ID}:
            try:
                entries.append(self.resolve(self._config.model))
            except ServerError:
                pass
        hub = self._config.hf_hub_cache
        if hub.is_dir():
            for repo_dir in sorted(hub.glob("models--*--*")):
                repo_id = repo_dir.name[len("models--") :].replace("--", "/", 1)
                if repo_id == self._config.model:
                    continue
                snapshot = self._cached_snapshot(repo_id)
                if snapshot is not None and any(snapshot.glob("*.safetensors")):
                    entries.append(ModelEntry(repo_id, "local", str(snapshot), "Hugging Face cache"))
        return entries

    def worker_config(self, entry: ModelEntry, *, slot: int = 0) -> WorkerConfig:
        """How to start ``entry``'s worker; ``slot`` numbers the models, so that each gets its own core."""
        config, settings = self._config, entry.settings
        cpus, cpu_backend_only = config.worker_cpus.for_worker(slot)
        # An alias's own settings (the config file's) over the server's.
        own_concurrency = settings.decode_concurrency if settings is not None else None
        return WorkerConfig(
            model_id=entry.id,
            source=entry.source,
            location=entry.location,
            cache_dir=str(config.cache_dir),
            memory_budget_bytes=config.memory_budget_bytes,
            prefill_step_size=config.prefill_step_size,
            decode_concurrency=own_concurrency or config.decode_concurrency,
            prefill_batch_size=config.prefill_batch_size,
            prefill_bucket=config.prefill_bucket,
            prompt_cache_bytes=config.prompt_cache_bytes,
            grammar_compile_timeout=config.grammar_compile_timeout,
            chat_template=settings.chat_template if settings is not None else None,
            cpus=cpus,
            cpus_for_cpu_backend_only=cpu_backend_only,
            blas_library=config.worker_blas.library(),
        )


def idle_timeout(config: Config, entry: ModelEntry) -> float:
    """The model's idle timeout: its alias's own, else the server's."""
    settings = entry.settings
    return settings.idle_timeout if settings is not None and settings.idle_timeout is not None else config.idle_timeout
