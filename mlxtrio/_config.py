"""Settings: flags, environment variables, a config file, and defaults that follow the machine's RAM.

Precedence: an explicit flag, then its environment variable, then the config
file, then the default (``Config``'s, or the RAM tier's). The tier is part of
the effective configuration that /admin/status reports. Every default is
written once, on ``Config``'s field, and every setting is parsed once, in
``Config.from_environment``, into its field's type; the rest of the server
only reads typed values.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path

import attrs

from ._group_settings import parse_group_port, parse_group_ssh
from ._model_settings import ModelSettings, model_settings
from ._setting_parsers import field_parsers
from .tuning import WorkerAllocator, WorkerBlas, WorkerCpus

__all__ = ["Config", "ModelSettings", "RamTier", "ram_tier", "total_ram_bytes"]

GB = 1_000_000_000
MB = 1_000_000


@attrs.frozen
class RamTier:
    name: str
    idle_timeout: float
    request_timeout: float
    memory_budget_bytes: int
    max_loaded_models: int
    image_max_pixels: int
    images_per_request: int
    image_max_bytes: int


def total_ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def ram_tier(ram_bytes: int) -> RamTier:
    """Defaults by RAM (decimal GB): >= 64, 24-63, < 24."""
    if ram_bytes >= 64 * GB:
        return RamTier(">=64GB", 600.0, 600.0, ram_bytes - 20 * GB, 4, 2048 * 2048, 16, 20 * MB)
    if ram_bytes >= 24 * GB:
        return RamTier("24-63GB", 300.0, 300.0, ram_bytes - 8 * GB, 2, 1536 * 1536, 8, 20 * MB)
    return RamTier("<24GB", 180.0, 180.0, max(ram_bytes - 4 * GB, ram_bytes // 2), 1, 1024 * 1024, 4, 10 * MB)


def _default_cache_dir(env: Mapping[str, str]) -> Path:
    if "MLX_CACHE_DIR" in env:
        return Path(env["MLX_CACHE_DIR"])
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mlxtrio"


def _default_hf_hub(env: Mapping[str, str]) -> Path:
    if "HF_HUB_CACHE" in env:
        return Path(env["HF_HUB_CACHE"])
    home = env.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    return Path(home) / "hub"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to, assume the network


_HOST_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_WEB_ORIGIN = re.compile(r"https?://(?:\[[0-9a-f:.]+\]|[a-z0-9_-]+(?:\.[a-z0-9_-]+)*)(?::[0-9]{1,5})?")


def _strings(value: object) -> tuple[str, ...]:
    """A list setting: comma-separated in a string (a variable), or a list (TOML, repeated flags)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(item, str) for item in items):
        raise ValueError(f"expected a list of strings, not {value!r}")
    return tuple(item.strip() for item in items if item.strip())


def _host_names(value: object) -> tuple[str, ...]:
    """Host names or addresses, lower case, without an IPv6 address's brackets; ``*`` is any."""
    names = []
    for item in _strings(value):
        name = item.lower().removeprefix("[").removesuffix("]")
        if name != "*" and not _HOST_NAME.fullmatch(name):
            try:
                ipaddress.ip_address(name)
            except ValueError:
                raise ValueError(f"allowed_hosts: {item!r} is not a host name or address (no scheme, port or path)") from None
        names.append(name)
    return tuple(names)


def _web_origins(value: object) -> tuple[str, ...]:
    """Web origins (``scheme://host[:port]``), lower case, without a trailing slash; ``*`` is any."""
    origins = []
    for item in _strings(value):
        origin = item.lower().removesuffix("/")
        if origin != "*" and not _WEB_ORIGIN.fullmatch(origin):
            raise ValueError(f'cors_origins: {item!r} is not a web origin such as https://app.example or http://localhost:5173 ("*": any)')
        origins.append(origin)
    return tuple(origins)


def _read_config_file(path: Path) -> tuple[dict[str, object], tuple[ModelSettings, ...]]:
    """The settings (parsed) and the models of a TOML config file; ValueError, naming the file, if it is wrong."""
    try:
        document = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read the config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    table = document.pop("models", {})
    unknown = sorted(set(document) - set(_SETTING_PARSERS))
    if unknown:
        hint = " (API keys and tokens go in MLX_API_KEY_FILE and MLX_ADMIN_TOKEN)" if {"api_keys", "admin_token"} & set(unknown) else ""
        raise ValueError(f"{path}: unknown settings {', '.join(unknown)}{hint}")
    settings = {}
    for key, value in document.items():
        try:
            settings[key] = _SETTING_PARSERS[key](value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {key} = {value!r}: {exc}") from None
    if not isinstance(table, dict):
        raise ValueError(f"{path}: [models] must be a table of aliases")
    return settings, tuple(model_settings(path, name, entry) for name, entry in table.items())


def _api_keys(env: Mapping[str, str]) -> tuple[str, ...]:
    """MLX_API_KEY (comma-separated) and MLX_API_KEY_FILE (one per line): a file keeps keys out of ``ps``."""
    keys = [key.strip() for key in env.get("MLX_API_KEY", "").split(",")]
    if env.get("MLX_API_KEY_FILE"):
        keys += [line.strip() for line in Path(env["MLX_API_KEY_FILE"]).read_text().splitlines()]
    return tuple(key for key in keys if key and not key.startswith("#"))


@attrs.frozen(kw_only=True)
class Config:
    """The server's settings, each of its type: ``from_environment`` parses them, once."""

    host: str = "127.0.0.1"
    port: int = 11440
    admin_host: str = "127.0.0.1"
    admin_port: int = 11441
    # Host header names both APIs answer to besides loopback names and the bound
    # address ("*": any), and the web origins browsers may call them from ("*": any).
    # None by default: a web page cannot drive the APIs (api/_origin.py).
    allowed_hosts: tuple[str, ...] = attrs.field(default=(), metadata={"parse": _host_names})
    cors_origins: tuple[str, ...] = attrs.field(default=(), metadata={"parse": _web_origins})
    # The default model: a local directory or a Hugging Face repo id; None serves the demo.
    model: str | None = None
    # These four, and the three image limits below, default to the RAM tier's (ram_tier).
    idle_timeout: float
    request_timeout: float
    memory_budget_bytes: int = attrs.field(metadata={"variable": "MLX_MEMORY_BUDGET"})
    # Models resident at once (each its own worker); one more evicts the least recently used idle one.
    max_loaded_models: int
    # Images: pixels an image is resized to at most (aspect kept)
    # before the model sees it, images in one request (400 past it), and an image's bytes as sent or fetched (413 past it).
    image_max_pixels: int
    images_per_request: int
    image_max_bytes: int
    # http(s) image URLs: fetched only when on (off: 400), never from private, loopback, link-local or metadata
    # addresses (api/_fetch.py), each within image_max_bytes and image_fetch_timeout seconds.
    image_fetch: bool = False
    image_fetch_timeout: float = 10.0
    ram_bytes: int
    ram_tier: str
    # A worker with work that sends nothing for this long is killed and restarted.
    hang_timeout: float = 60.0
    # SIGTERM/SIGINT: how long in-flight requests may take to finish.
    grace_period: float = 30.0
    # How long a client may take to send a request's body (408 past it): Quart's own default.
    body_timeout: float = 60.0
    # Seconds a stream may stay silent (a long prefill) before a keep-alive event goes out, so that
    # proxies and clients that drop idle connections keep it; 0: never.
    stream_keepalive: float = 15.0
    # Continuous batching: sequences decoded together (1: no batching), prompts
    # prefilled together, prompt tokens per prefill chunk.
    decode_concurrency: int = 32
    prefill_batch_size: int = 8
    prefill_step_size: int = 512
    # Prefill lengths rounded up to multiples of this (0: off), so that backends
    # that compile per shape (MLX CUDA) see few shapes. Off until a benchmark
    # that measures time to first token cleanly says it helps.
    prefill_bucket: int = 0
    # Requests that may wait beyond those being decoded; past that: 429.
    max_queue: int = 128
    # Embedding models: tokens of one forward pass, padding included (a request's inputs are cut into such passes).
    embed_batch_tokens: int = 8192
    # Worker groups: the first port their ranks may listen on (mlx's own), and the command that starts a remote rank.
    group_port: int = attrs.field(default=32323, metadata={"parse": parse_group_port})
    group_ssh: str = attrs.field(default="ssh -o BatchMode=yes", metadata={"parse": parse_group_ssh})
    # CPUs each worker runs on: "auto", "none" or a CPU list (see tuning/_affinity.py).
    worker_cpus: WorkerCpus = WorkerCpus("auto")
    # The malloc each worker runs with: "auto", "system" or a library's path (see tuning/_allocator.py).
    worker_allocator: WorkerAllocator = WorkerAllocator("auto")
    # The BLAS each worker's MLX runs float32 products with: "auto", "mlx" or a library's path (see tuning/_blas.py).
    worker_blas: WorkerBlas = WorkerBlas("auto")
    # Byte cap of each worker's prompt (KV) cache; 0 turns it off.
    prompt_cache_bytes: int = 1 << 30
    # Request limits: body size (413 past it), max_tokens and n (400 past them).
    max_body_bytes: int = 16 * 1024 * 1024
    max_tokens_limit: int = attrs.field(default=32768, metadata={"variable": "MLX_MAX_TOKENS"})
    max_choices: int = 16
    # Grammars (response_format, required tool calls): a JSON schema's size in
    # bytes (400 past it, checked by the orchestrator), and how long the worker
    # may take to compile one (400 past it), off its decode loop.
    grammar_max_bytes: int = 64 * 1024
    grammar_compile_timeout: float = 5.0
    # Bearer tokens: any of api_keys for the OpenAI API (none: open), admin_token
    # for the admin API. Never shown in /admin/status or a repr.
    api_keys: tuple[str, ...] = attrs.field(default=(), repr=False)
    admin_token: str | None = attrs.field(default=None, repr=False)
    cache_dir: Path
    # HF_HUB_CACHE or HF_HOME, as Hugging Face's own tools read them (_default_hf_hub).
    hf_hub_cache: Path = attrs.field(metadata={"variable": None})
    # Hugging Face repo ids not in the local cache may be fetched only if allowed.
    allow_downloads: bool = False
    pid_file: Path | None = None
    # Where the status snapshot (status.json) is written; None: nowhere.
    state_dir: Path | None = None
    # Stored Responses API responses, in responses.sqlite3 under state_dir (None: cache_dir/state):
    # their JSON's bytes in all (0: nothing is stored) and their age in days, the oldest evicted first.
    responses_store_bytes: int = 256 * 1024 * 1024
    responses_store_days: float = 30.0
    # The TOML file the settings came from (--config, MLX_CONFIG), and the models it names.
    config_file: Path | None = None
    models: tuple[ModelSettings, ...] = ()

    def model_settings(self, name: str) -> ModelSettings | None:
        return next((model for model in self.models if model.name == name), None)

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Config:
        """Settings from the config file, then ``env`` (default: os.environ), then ``overrides`` (flags; None: unset).

        The config file is ``overrides["config_file"]`` or ``MLX_CONFIG``.
        """
        env = os.environ if env is None else env
        ram = total_ram_bytes()
        tier = ram_tier(ram)
        config_file = overrides.get("config_file") or env.get("MLX_CONFIG") or None
        from_file, models = _read_config_file(Path(str(config_file))) if config_file else ({}, ())
        values: dict[str, object] = {
            "idle_timeout": tier.idle_timeout,
            "request_timeout": tier.request_timeout,
            "memory_budget_bytes": tier.memory_budget_bytes,
            "max_loaded_models": tier.max_loaded_models,
            "image_max_pixels": tier.image_max_pixels,
            "images_per_request": tier.images_per_request,
            "image_max_bytes": tier.image_max_bytes,
        }
        values.update(from_file)
        for key, variable in _VARIABLES.items():
            if env.get(variable):
                try:
                    values[key] = _SETTING_PARSERS[key](env[variable])
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"{variable}={env[variable]!r}: {exc}") from None
        values.setdefault("cache_dir", _default_cache_dir(env))
        if "hf_hub_cache" not in values or "HF_HUB_CACHE" in env or "HF_HOME" in env:
            values["hf_hub_cache"] = _default_hf_hub(env)
        values.update(
            api_keys=_api_keys(env),
            admin_token=env.get("MLX_ADMIN_TOKEN") or None,
            ram_bytes=ram,
            ram_tier=tier.name,
            models=models,
            config_file=Path(str(config_file)) if config_file else None,
        )
        for key, value in overrides.items():
            if value is not None:
                values[key] = _SETTING_PARSERS[key](value) if key in _SETTING_PARSERS else value
        config = cls(**values)
        config._check()
        return config

    def _check(self) -> None:
        """What each setting's type does not say already."""
        for name in ("decode_concurrency", "prefill_batch_size", "prefill_step_size", "max_body_bytes", "max_tokens_limit", "max_choices", "max_loaded_models", "grammar_max_bytes", "image_max_pixels", "image_max_bytes", "embed_batch_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.prefill_bucket < 0:
            raise ValueError(f"prefill_bucket must be 0 (off) or more, not {self.prefill_bucket}")
        # Libraries are looked up now (ldconfig, a subprocess, cached): not later, inside the event loop.
        self.worker_allocator.library()
        self.worker_blas.library()
        if not self.grammar_compile_timeout > 0:
            raise ValueError(f"grammar_compile_timeout must be more than 0, not {self.grammar_compile_timeout}")
        if not self.body_timeout > 0:
            raise ValueError(f"body_timeout must be more than 0, not {self.body_timeout}")
        if self.responses_store_bytes < 0:
            raise ValueError(f"responses_store_bytes must be 0 (nothing stored) or more, not {self.responses_store_bytes}")
        if not self.responses_store_days > 0:
            raise ValueError(f"responses_store_days must be more than 0, not {self.responses_store_days}")
        if self.images_per_request < 0:
            raise ValueError(f"images_per_request must be 0 (no images) or more, not {self.images_per_request}")
        if not self.image_fetch_timeout > 0:
            raise ValueError(f"image_fetch_timeout must be more than 0, not {self.image_fetch_timeout}")
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be 0 or more, not {self.max_queue}")
        if not is_loopback(self.admin_host) and not self.admin_token:
            raise ValueError(
                f"the admin API would listen on {self.admin_host}, beyond this machine, with no token: "
                "set MLX_ADMIN_TOKEN, or keep MLX_ADMIN_HOST on 127.0.0.1"
            )

    def describe(self) -> dict:
        """The effective settings, for /admin/status: secrets only as whether they are set."""
        settings = {
            key: (str(value) if isinstance(value, Path | WorkerCpus | WorkerAllocator | WorkerBlas) else value)
            for key, value in attrs.asdict(self, recurse=False).items()
        }
        settings["models"] = {model.name: attrs.asdict(model) for model in self.models}
        settings["api_keys"] = len(self.api_keys)
        settings["admin_token"] = self.admin_token is not None
        return settings


# Fields that are no settings of their own: measured, read their own way (secrets), or the file's.
_NOT_SETTINGS = {"ram_bytes", "ram_tier", "api_keys", "admin_token", "config_file", "models"}
_SETTING_PARSERS = field_parsers(Config, [field.name for field in attrs.fields(Config) if field.name not in _NOT_SETTINGS])
# Each setting's environment variable: MLX_ and its name, unless its field names another (or None).
_VARIABLES = {
    name: variable
    for name, field in attrs.fields_dict(Config).items()
    if name in _SETTING_PARSERS and (variable := field.metadata.get("variable", f"MLX_{name.upper()}")) is not None
}
