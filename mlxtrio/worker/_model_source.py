"""Where a worker's model comes from (the built-in demos, a directory, the Hub), and why a load failed."""

from __future__ import annotations

from pathlib import Path

from .. import _protocol as p

__all__ = ["LoadError", "model_path"]


class LoadError(Exception):
    """Why the model did not load, in a sentence; unavailable by default: the server tries again after a back-off."""

    def __init__(self, message: str, *, kind: p.ErrorKind = p.ErrorKind.UNAVAILABLE, code: str = "load_failed") -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code


def model_path(config: p.WorkerConfig) -> Path:
    """The directory of the model ``config`` names: built on first use for a demo, fetched for a Hub repository.

    Called before anything imports mlx-lm, which imports transformers: its index is kept (``_transformers_index.py``).
    """
    from ._transformers_index import keep_transformers_index

    keep_transformers_index(Path(config.cache_dir))
    from ._mlx_lm import download

    if config.source == "demo":
        from ._demo import ensure_demo_model

        return ensure_demo_model(Path(config.cache_dir))
    if config.source == "demo-vision":
        from ._vision._demo import ensure_demo_vision_model

        return ensure_demo_vision_model(Path(config.cache_dir))
    if config.source == "demo-embed":
        from ._embed import ensure_demo_embed_model

        return ensure_demo_embed_model(Path(config.cache_dir))
    if config.source == "demo-embed-decoder":
        from ._embed import ensure_demo_embed_decoder_model

        return ensure_demo_embed_decoder_model(Path(config.cache_dir))
    if config.source == "local":
        return Path(config.location)
    if config.source == "hub":
        return _download(download, config.location)
    raise LoadError(f"unknown model source {config.source!r}")


def _download(download, repo: str) -> Path:  # noqa: ANN001 - _mlx_lm.download
    """The repository's files; a repository the Hub does not have is not found, any other failure may pass."""
    from huggingface_hub.utils import RepositoryNotFoundError

    try:
        return download(repo)
    except RepositoryNotFoundError as exc:
        raise LoadError("the Hugging Face Hub has no such repository", kind=p.ErrorKind.NOT_FOUND, code="model_not_found") from exc
    except Exception as exc:  # noqa: BLE001 - the network, the disk: another attempt may succeed
        raise LoadError(f"could not fetch it: {type(exc).__name__}: {exc}") from exc
