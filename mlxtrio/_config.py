"""Settings: flags, environment variables, and defaults that follow the machine's RAM.

Precedence: an explicit flag, then its environment variable, then the RAM
tier's default. The tier is part of the effective configuration that
/admin/status reports.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path

import attrs

__all__ = ["Config", "RamTier", "ram_tier", "total_ram_bytes"]

GB = 1_000_000_000


@attrs.frozen
class RamTier:
    name: str
    idle_timeout: float
    request_timeout: float
    memory_budget_bytes: int
    max_loaded_models: int


def total_ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def ram_tier(ram_bytes: int) -> RamTier:
    """Defaults by RAM (decimal GB): >= 64, 24-63, < 24."""
    if ram_bytes >= 64 * GB:
        return RamTier(">=64GB", 600.0, 600.0, ram_bytes - 20 * GB, 4)
    if ram_bytes >= 24 * GB:
        return RamTier("24-63GB", 300.0, 300.0, ram_bytes - 8 * GB, 2)
    return RamTier("<24GB", 180.0, 180.0, max(ram_bytes - 4 * GB, ram_bytes // 2), 1)


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


def _flag(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to, assume the network


def _api_keys(env: Mapping[str, str]) -> tuple[str, ...]:
    """MLX_API_KEY (comma-separated) and MLX_API_KEY_FILE (one per line): a file keeps keys out of ``ps``."""
    keys = [key.strip() for key in env.get("MLX_API_KEY", "").split(",")]
    if env.get("MLX_API_KEY_FILE"):
        keys += [line.strip() for line in Path(env["MLX_API_KEY_FILE"]).read_text().splitlines()]
    return tuple(key for key in keys if key and not key.startswith("#"))


@attrs.frozen(kw_only=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 11440
    admin_host: str = "127.0.0.1"
    admin_port: int = 11441
    # The default model: a local directory or a Hugging Face repo id; None serves the demo.
    model: str | None = None
    idle_timeout: float
    request_timeout: float
    memory_budget_bytes: int
    # Models resident at once (each its own worker); one more evicts the least recently used idle one.
    max_loaded_models: int
    ram_bytes: int
    ram_tier: str
    # A worker with work that sends nothing for this long is killed and restarted.
    hang_timeout: float = 60.0
    # SIGTERM/SIGINT: how long in-flight requests may take to finish.
    grace_period: float = 30.0
    # Continuous batching: sequences decoded together (1: no batching), prompts
    # prefilled together, prompt tokens per prefill chunk.
    decode_concurrency: int = 32
    prefill_batch_size: int = 8
    prefill_step_size: int = 512
    # Requests that may wait beyond those being decoded; past that: 429.
    max_queue: int = 128
    # Byte cap of each worker's prompt (KV) cache; 0 turns it off.
    prompt_cache_bytes: int = 1 << 30
    # Request limits: body size (413 past it), max_tokens and n (400 past them).
    max_body_bytes: int = 16 * 1024 * 1024
    max_tokens_limit: int = 32768
    max_choices: int = 16
    # Bearer tokens: any of api_keys for the OpenAI API (none: open), admin_token
    # for the admin API. Never shown in /admin/status or a repr.
    api_keys: tuple[str, ...] = attrs.field(default=(), repr=False)
    admin_token: str | None = attrs.field(default=None, repr=False)
    cache_dir: Path
    hf_hub_cache: Path
    # Hugging Face repo ids not in the local cache may be fetched only if allowed.
    allow_downloads: bool = False
    pid_file: Path | None = None
    # Where the status snapshot (status.json) is written; None: nowhere.
    state_dir: Path | None = None

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Config:
        """Settings from ``env`` (default: os.environ), then ``overrides`` (flags; None means unset)."""
        env = os.environ if env is None else env
        ram = total_ram_bytes()
        tier = ram_tier(ram)
        values: dict[str, object] = {
            "host": env.get("MLX_HOST", "127.0.0.1"),
            "port": int(env.get("MLX_PORT", 11440)),
            "admin_host": env.get("MLX_ADMIN_HOST", "127.0.0.1"),
            "admin_port": int(env.get("MLX_ADMIN_PORT", 11441)),
            "model": env.get("MLX_MODEL") or None,
            "idle_timeout": float(env.get("MLX_IDLE_TIMEOUT", tier.idle_timeout)),
            "request_timeout": float(env.get("MLX_REQUEST_TIMEOUT", tier.request_timeout)),
            "memory_budget_bytes": int(env.get("MLX_MEMORY_BUDGET", tier.memory_budget_bytes)),
            "max_loaded_models": int(env.get("MLX_MAX_LOADED_MODELS", tier.max_loaded_models)),
            "hang_timeout": float(env.get("MLX_HANG_TIMEOUT", 60.0)),
            "grace_period": float(env.get("MLX_GRACE_PERIOD", 30.0)),
            "decode_concurrency": int(env.get("MLX_DECODE_CONCURRENCY", 32)),
            "prefill_batch_size": int(env.get("MLX_PREFILL_BATCH_SIZE", 8)),
            "prefill_step_size": int(env.get("MLX_PREFILL_STEP_SIZE", 512)),
            "max_queue": int(env.get("MLX_MAX_QUEUE", 128)),
            "prompt_cache_bytes": int(env.get("MLX_PROMPT_CACHE_BYTES", 1 << 30)),
            "max_body_bytes": int(env.get("MLX_MAX_BODY_BYTES", 16 * 1024 * 1024)),
            "max_tokens_limit": int(env.get("MLX_MAX_TOKENS", 32768)),
            "max_choices": int(env.get("MLX_MAX_CHOICES", 16)),
            "api_keys": _api_keys(env),
            "admin_token": env.get("MLX_ADMIN_TOKEN") or None,
            "cache_dir": _default_cache_dir(env),
            "hf_hub_cache": _default_hf_hub(env),
            "allow_downloads": _flag(env.get("MLX_ALLOW_DOWNLOADS", "0")),
            "pid_file": Path(env["MLX_PID_FILE"]) if env.get("MLX_PID_FILE") else None,
            "state_dir": Path(env["MLX_STATE_DIR"]) if env.get("MLX_STATE_DIR") else None,
            "ram_bytes": ram,
            "ram_tier": tier.name,
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        config = cls(**values)
        for name in ("decode_concurrency", "prefill_batch_size", "prefill_step_size", "max_body_bytes", "max_tokens_limit", "max_choices", "max_loaded_models"):
            if getattr(config, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(config, name)}")
        if config.max_queue < 0:
            raise ValueError(f"max_queue must be 0 or more, not {config.max_queue}")
        if not is_loopback(config.admin_host) and not config.admin_token:
            raise ValueError(
                f"the admin API would listen on {config.admin_host}, beyond this machine, with no token: "
                "set MLX_ADMIN_TOKEN, or keep MLX_ADMIN_HOST on 127.0.0.1"
            )
        return config

    def describe(self) -> dict:
        """The effective settings, for /admin/status: secrets only as whether they are set."""
        settings = {
            key: (str(value) if isinstance(value, Path) else value)
            for key, value in attrs.asdict(self, recurse=False).items()
        }
        settings["api_keys"] = len(self.api_keys)
        settings["admin_token"] = self.admin_token is not None
        return settings
