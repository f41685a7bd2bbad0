"""GET /api/tags, GET /api/ps and POST /api/show: the catalog and the loaded models, in Ollama's shapes.

What Ollama reads from a GGUF file is read here from the model directory's
``config.json`` and ``tokenizer_config.json``, off the event loop and at most
``_MAX_FILE_BYTES`` of each; what a directory does not tell (a built-in demo
before it is built, a repo still to download) is left empty. ``digest`` is
no digest of the weights: it names the entry (its id and where its files
are), steady while they stay, as clients use it to tell models apart.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from ...orchestrator import ModelEntry
from .._common import ServerState

__all__ = ["list_models", "running_models", "show_model"]

_MAX_FILE_BYTES = 4 << 20
# config.json's fields as Ollama's model_info names them (after the architecture's name).
_MODEL_INFO = {
    "max_position_embeddings": "context_length",
    "hidden_size": "embedding_length",
    "num_hidden_layers": "block_count",
    "num_attention_heads": "attention.head_count",
    "num_key_value_heads": "attention.head_count_kv",
    "vocab_size": "vocab_size",
}
# A time Ollama's clients read as "not known" (Go's zero time).
_UNKNOWN_TIME = "0001-01-01T00:00:00Z"
# expires_at of a model that stays loaded (keep_alive negative): far enough.
_NEVER = "9999-12-31T23:59:59Z"


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            loaded = json.loads(file.read(_MAX_FILE_BYTES))
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _files(entry: ModelEntry) -> tuple[dict[str, Any], dict[str, Any], float | None]:
    """The entry's config.json, tokenizer_config.json and its config's time, where it is a directory here."""
    if entry.source != "local":
        return {}, {}, None
    directory = Path(entry.location)
    config = directory / "config.json"
    try:
        modified = config.stat().st_mtime
    except OSError:
        modified = None
    return _json_file(config), _json_file(directory / "tokenizer_config.json"), modified


def _quantization(config: dict[str, Any]) -> str:
    quantization = config.get("quantization")
    if isinstance(quantization, dict) and isinstance(quantization.get("bits"), int):
        return f"Q{quantization['bits']}"
    dtype = config.get("torch_dtype")
    return dtype.upper().replace("FLOAT", "F").replace("BFLOAT", "BF") if isinstance(dtype, str) else ""


def _details(config: dict[str, Any]) -> dict:
    family = config.get("model_type") if isinstance(config.get("model_type"), str) else ""
    return {
        "parent_model": "",
        "format": "safetensors" if config else "",
        "family": family,
        "families": [family] if family else None,
        "parameter_size": "",
        "quantization_level": _quantization(config),
    }


def _digest(entry: ModelEntry) -> str:
    return hashlib.sha256(f"{entry.id}\0{entry.source}\0{entry.location}".encode()).hexdigest()


def _listed(entry: ModelEntry) -> dict:
    config, _, modified = _files(entry)
    context_length = config.get("max_position_embeddings")
    return {
        "name": entry.id,
        "model": entry.id,
        "modified_at": _UNKNOWN_TIME if modified is None else _iso(modified),
        "size": entry.weights_bytes,
        "digest": _digest(entry),
        "details": _details(config),
        "context_length": context_length if isinstance(context_length, int) else 0,
    }


async def list_models(state: ServerState) -> dict:
    """What can be served: the catalog, as /v1/models lists it."""
    catalog = state.supervisor.catalog
    return {"models": await trio.to_thread.run_sync(lambda: [_listed(entry) for entry in catalog.list()])}


async def running_models(state: ServerState) -> dict:
    """The loaded models: their memory, and when each unloads if nothing uses it."""
    running = []
    for served in state.supervisor.loaded_models():
        if served.statistics().state != "ready":
            continue
        listed = await trio.to_thread.run_sync(_listed, state.supervisor.catalog.resolve(served.model_id))
        expires = served.expires_at()
        size = served.resident_bytes
        # MLX's memory is the GPU's on Apple silicon (unified memory): all of it.
        running.append({**listed, "size": size, "size_vram": size, "expires_at": _NEVER if expires is None else _iso(expires)})
    return {"models": running}


def _template(entry: ModelEntry, tokenizer_config: dict[str, Any]) -> str:
    if entry.settings is not None and entry.settings.chat_template:
        return entry.settings.chat_template
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):
        # Named templates (default, tool_use ...): the default one.
        named = {item.get("name"): item.get("template") for item in template if isinstance(item, dict)}
        template = named.get("default")
    if not isinstance(template, str) and entry.source == "local":
        jinja = Path(entry.location) / "chat_template.jinja"
        try:
            with jinja.open("rb") as file:
                template = file.read(_MAX_FILE_BYTES).decode(errors="replace")
        except OSError:
            template = ""
    return template if isinstance(template, str) else ""


def _show(entry: ModelEntry) -> dict:
    config, tokenizer_config, modified = _files(entry)
    template = _template(entry, tokenizer_config)
    architecture = config.get("model_type", "")
    info: dict[str, Any] = {"general.architecture": architecture} if architecture else {}
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    for field, name in _MODEL_INFO.items():
        value = text_config.get(field, config.get(field))
        if isinstance(value, int):
            info[f"{architecture}.{name}"] = value
    # Ollama's capabilities: an embedding model (as configured, or a built-in) only embeds.
    capabilities = ["embedding"] if entry.task == "embed" else ["completion"]
    if "tools" in template:
        capabilities.append("tools")
    if entry.takes_images:
        capabilities.append("vision")
    if "enable_thinking" in template or "<think>" in template:
        capabilities.append("thinking")
    return {
        "modelfile": "",
        "parameters": "",
        "template": template,
        "license": "",
        "details": _details(config),
        "model_info": info,
        "capabilities": capabilities,
        "modified_at": _UNKNOWN_TIME if modified is None else _iso(modified),
    }


async def show_model(entry: ModelEntry) -> dict:
    return await trio.to_thread.run_sync(_show, entry)
