"""Which model ids may be served, and where each one's weights come from.

The only doors to the filesystem: the operator's configured model (a
directory or a repo id), the built-in demos, and repo ids present in the local
Hugging Face cache (or fetched, when the operator allows downloads). A model
id in a request is never used as a path: a repo id is checked against a
strict pattern and mapped to its cache directory, and the resolved files
must lie inside the cache. A configured local model also answers to its
directory's name, a name only looked up among the configured ones.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import attrs

from .._config import Config, ModelSettings
from .._errors import ErrorKind, ServerError
from .._group_support import group_refusal
from .._models import model_directory_problem, takes_images, weights_size
from .._protocol import EmbeddingSettings, GroupConfig, WorkerConfig

__all__ = ["DEMO_EMBED_DECODER_MODEL_ID", "DEMO_EMBED_MODEL_ID", "DEMO_MODEL_ID", "DEMO_VISION_MODEL_ID", "ModelCatalog", "ModelEntry"]

log = logging.getLogger("mlxtrio.orchestrator")

DEMO_MODEL_ID = "demo"
DEMO_VISION_MODEL_ID = "demo-vision"
DEMO_EMBED_MODEL_ID = "demo-embed"
DEMO_EMBED_DECODER_MODEL_ID = "demo-embed-decoder"
# The built-in models, each its own source (the worker builds it into the cache directory), and what it is.
_BUILT_IN = {
    DEMO_MODEL_ID: "built-in demo model: random weights, nonsense text",
    DEMO_VISION_MODEL_ID: "built-in demo vision model (LLaVA): random weights, nonsense text, reads images",
    DEMO_EMBED_MODEL_ID: "built-in demo embedding model (BERT, mean pooling): random weights, meaningless vectors",
    DEMO_EMBED_DECODER_MODEL_ID: "built-in demo decoder embedding model (Qwen3, last token, Matryoshka): random weights, meaningless vectors",
}
# What each built-in serves, known without loading it: a request of the other kind is refused at once.
_BUILT_IN_TASKS = {DEMO_EMBED_MODEL_ID: "embed", DEMO_EMBED_DECODER_MODEL_ID: "embed"}
# An embedding pass aims at this fraction of the hang timeout (worker/_embed/_passes.py).
_PASSES_PER_HANG_TIMEOUT = 10
# A 404 for a model names this many of the models there are.
_LISTED_IN_404 = 8
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


@attrs.frozen
class ModelEntry:
    id: str
    source: str  # "demo", "demo-vision", "demo-embed", "demo-embed-decoder", "local", "hub"
    location: str
    description: str
    # Per-model settings from the config file, for an alias.
    settings: ModelSettings | None = None

    @property
    def takes_images(self) -> bool | None:
        """Whether the model takes images, from its config.json (None: not known before it is downloaded)."""
        if self.source == "local":
            return takes_images(Path(self.location))
        return None if self.source == "hub" else self.source == DEMO_VISION_MODEL_ID

    @property
    def task(self) -> str:
        """"generate" or "embed" as configured (the built-ins' own); "auto": its worker tells from its files."""
        return self.settings.task if self.settings is not None else _task_of(self)

    @property
    def group_refusal(self) -> str | None:
        """Why its worker group cannot serve it, where its files tell before any rank starts (None: a group can, or only loading tells)."""
        settings = self.settings
        if settings is None or not settings.hosts or self.source != "local":
            return None
        assert settings.parallel is not None
        return group_refusal(Path(self.location), settings.parallel)

    @property
    def weights_bytes(self) -> int:
        """The weight files' size, where they are on disk already (0: not known before loading)."""
        return weights_size(Path(self.location)) if self.source == "local" else 0


class _Missing(LookupError):
    """No model by that name: why, in a sentence (``resolve`` adds what exists)."""


def _local_path(target: str) -> Path | None:
    """``target`` as a local directory's path, or None for a Hugging Face repo id (``owner/name``) not on disk."""
    path = Path(target).expanduser()
    return path if path.exists() or not _REPO_ID.match(target) else None


class ModelCatalog:
    def __init__(self, config: Config) -> None:
        self._config = config
        # The directory names of the configured local models, each an alias of its model's id;
        # a name two of them share is no one's (said at start-up), and an explicit alias wins.
        self._short_names: dict[str, str] = {}
        self._shared_names: dict[str, list[str]] = {}
        claims: dict[str, list[str]] = {}
        configured = self._configured()
        taken = set(_BUILT_IN) | {model_id for model_id, _ in configured}
        for model_id, target in configured:
            path = _local_path(target)
            name = path.name if path is not None else ""
            if name and name not in taken:
                claims.setdefault(name, []).append(model_id)
        for name, model_ids in claims.items():
            if len(model_ids) == 1:
                self._short_names[name] = model_ids[0]
            else:
                self._shared_names[name] = model_ids

    @property
    def default_model(self) -> str:
        return self._config.model or DEMO_MODEL_ID

    def _configured(self) -> list[tuple[str, str]]:
        """The operator's models, (id, path or repo id): the config file's aliases, then the default model."""
        models = [(alias.name, alias.path) for alias in self._config.models]
        model = self._config.model
        if model is not None and model not in _BUILT_IN and self._config.model_settings(model) is None:
            models.append((model, model))
        return models

    def check_configured(self) -> None:
        """Refuse (ValueError) a configured local model that cannot exist: a path that is not there, or no directory."""
        problems = []
        for model_id, target in self._configured():
            path = _local_path(target)
            if path is None or path.is_dir():
                continue  # a repo id may be downloaded yet; a directory that is no model is told at its load
            why = "is not a directory" if path.exists() else "does not exist"
            setting = f"{self._config.config_file}: models.{model_id}" if model_id != target else "model"
            problems.append(f"{setting} = {target!r}: {path.absolute()} {why}")
        if problems:
            raise ValueError(
                "; ".join(problems) + " (a model is a local directory, an alias of the config file, "
                "or a Hugging Face repo id such as mlx-community/Qwen2.5-0.5B-Instruct-4bit)"
            )

    def log_configured(self) -> None:
        """At start-up: the short names, the names no model gets, and models that will not load as they are."""
        for name, model_id in self._short_names.items():
            log.info("model %r also answers to %r, its directory's name", model_id, name)
        for name, model_ids in self._shared_names.items():
            log.warning(
                "%r is the directory name of several models (%s): it names none of them; give each an alias in the config file",
                name,
                ", ".join(map(repr, model_ids)),
            )
        for model_id, target in self._configured():
            path = _local_path(target)
            if path is None:
                if self._cached_snapshot(target) is None and not self._config.allow_downloads:
                    log.warning(
                        "model %r: %r is neither a directory nor in the Hugging Face cache (%s), and downloads are off: "
                        "requests for it fail until it is downloaded, or the server runs with --allow-downloads",
                        model_id,
                        target,
                        self._config.hf_hub_cache,
                    )
            elif (problem := model_directory_problem(path)) is not None:
                where = "" if str(path) == model_id else f" ({path})"
                log.warning("model %r%s will not load as it is: %s", model_id, where, problem)

    def _not_cached(self, repo_id: str) -> str:
        return (
            f"{repo_id!r} is not in the Hugging Face cache ({self._config.hf_hub_cache}) and downloads are off: "
            "download it first, or start the server with --allow-downloads (MLX_ALLOW_DOWNLOADS=1)"
        )

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

    def _target(self, model_id: str, target: str, what: str, settings: ModelSettings | None = None) -> ModelEntry:
        """The operator's directory or repo id ``target``, served as ``model_id``."""
        path = Path(target).expanduser()
        if path.is_dir():
            return ModelEntry(model_id, "local", str(path.resolve()), what, settings)
        snapshot = self._cached_snapshot(target)
        if snapshot is not None:
            return ModelEntry(model_id, "local", str(snapshot), f"{what} (Hugging Face cache)", settings)
        if self._config.allow_downloads and _REPO_ID.match(target):
            return ModelEntry(model_id, "hub", target, f"{what} (to download)", settings)
        if _local_path(target) is None:
            raise _Missing(f"the model {model_id!r} ({what}): {self._not_cached(target)}")
        raise _Missing(f"the model {model_id!r} ({what}): {path} is no directory")

    def _find(self, model_id: str) -> ModelEntry:
        if model_id in _BUILT_IN:
            return ModelEntry(model_id, model_id, "", _BUILT_IN[model_id])
        alias = self._config.model_settings(model_id)
        if alias is not None:
            return self._target(model_id, alias.path, f"alias for {alias.path}", alias)
        if self._config.model is not None and model_id == self._config.model:
            return self._target(model_id, model_id, "configured model")
        if model_id in self._short_names:
            return self._find(self._short_names[model_id])
        snapshot = self._cached_snapshot(model_id)
        if snapshot is not None:
            return ModelEntry(model_id, "local", str(snapshot), "Hugging Face cache")
        if _REPO_ID.match(model_id) and ".." not in model_id:
            if self._config.allow_downloads:
                return ModelEntry(model_id, "hub", model_id, "Hugging Face Hub (to download)")
            raise _Missing(self._not_cached(model_id))
        if model_id in self._shared_names:
            sharing = ", ".join(map(repr, self._shared_names[model_id]))
            raise _Missing(f"{model_id!r} is the directory name of several models ({sharing}), so of none")
        raise _Missing(f"the model {model_id!r} does not exist")

    def resolve(self, model_id: str) -> ModelEntry:
        """The entry for ``model_id`` (a short name gives its model's), or a ServerError (not_found) that lists what exists."""
        try:
            return self._find(model_id)
        except _Missing as missing:
            # The configured models only: any request may ask for a model that is not there, and the
            # Hugging Face cache's listing reads a directory tree of the operator's size.
            # The operator's own first: the built-in demos are the same everywhere.
            entries = sorted(self._configured_entries(), key=lambda entry: entry.source in _BUILT_IN)
            ids = [repr(entry.id) for entry in entries]
            shown = ", ".join(ids[:_LISTED_IN_404])
            if len(ids) > _LISTED_IN_404:
                shown += f" and {len(ids) - _LISTED_IN_404} more"
            message = f"{missing}; the models configured here: {shown} (GET /v1/models lists the Hugging Face cache's too)"
            raise ServerError(ErrorKind.NOT_FOUND, message, code="model_not_found", param="model") from None

    def _configured_entries(self) -> list[ModelEntry]:
        entries = []
        for model_id in [*_BUILT_IN] + [model_id for model_id, _ in self._configured()]:
            try:
                entries.append(self._find(model_id))
            except _Missing:
                pass  # a target that is not there (yet): not offered
        return entries

    def list(self) -> list[ModelEntry]:
        entries = self._configured_entries()
        configured = {entry.id for entry in entries} | {model_id for model_id, _ in self._configured()}
        hub = self._config.hf_hub_cache
        if hub.is_dir():
            for repo_dir in sorted(hub.glob("models--*--*")):
                repo_id = repo_dir.name[len("models--") :].replace("--", "/", 1)
                if repo_id in configured:
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
            image_max_pixels=config.image_max_pixels,
            task=entry.task,
            embedding=EmbeddingSettings(
                pooling=settings.pooling if settings is not None else None,
                normalize=settings.normalize if settings is not None else None,
                matryoshka=settings.matryoshka if settings is not None else False,
                batch_tokens=config.embed_batch_tokens,
                pass_seconds=config.hang_timeout / _PASSES_PER_HANG_TIMEOUT,
            ),
            group=_group(settings),
        )


def _group(settings: ModelSettings | None) -> GroupConfig | None:
    """A model with hosts is a worker group; its ports are taken at each start (orchestrator/_group.py)."""
    if settings is None or not settings.hosts:
        return None
    assert settings.parallel is not None and settings.backend is not None
    return GroupConfig(
        hosts=settings.hosts, parallel=settings.parallel, backend=settings.backend, ports=(), control_port=0, rdma=settings.rdma
    )


def _task_of(entry: ModelEntry) -> str:
    """A built-in's task; "auto" for any other model without a config entry: its worker tells from its files."""
    return _BUILT_IN_TASKS.get(entry.source, "generate") if entry.source in _BUILT_IN else "auto"


def idle_timeout(config: Config, entry: ModelEntry) -> float:
    """The model's idle timeout: its alias's own, else the server's."""
    settings = entry.settings
    return settings.idle_timeout if settings is not None and settings.idle_timeout is not None else config.idle_timeout
