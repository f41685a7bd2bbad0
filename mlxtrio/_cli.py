"""The ``mlxtrio`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import attrs
import trio

from . import __version__
from ._config import Config
from ._logging import LOG_FORMATS, configure_logging
from ._server import main as serve_main
from ._state_files import PidFileHeld
from ._status_report import report
from .orchestrator import ModelCatalog

__all__ = ["main"]

log = logging.getLogger("mlxtrio")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlxtrio", description="OpenAI-compatible LLM server for MLX")
    parser.add_argument("--version", action="version", version=f"mlxtrio {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server in the foreground")
    serve.add_argument("--config", type=Path, help="a TOML file of settings and model aliases (MLX_CONFIG)")
    serve.add_argument("--host", help="OpenAI API address (MLX_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="OpenAI API port, 0 for any free one (MLX_PORT, default 11440)")
    serve.add_argument("--admin-host", help="admin API address (MLX_ADMIN_HOST, default 127.0.0.1)")
    serve.add_argument("--admin-port", type=int, help="admin API port (MLX_ADMIN_PORT, default 11441)")
    serve.add_argument(
        "--allowed-host",
        action="append",
        help="a Host name to answer to besides loopback names and the bound address; repeatable, * for any (MLX_ALLOWED_HOSTS)",
    )
    serve.add_argument(
        "--cors-origin", action="append", help="a web origin browsers may call the APIs from; repeatable, * for any (MLX_CORS_ORIGINS)"
    )
    serve.add_argument("--model", help="default model: a local directory or a Hugging Face repo id (MLX_MODEL)")
    serve.add_argument("--idle-timeout", type=float, help="unload a model idle this many seconds (MLX_IDLE_TIMEOUT)")
    serve.add_argument("--request-timeout", type=float, help="answer 504 past this many seconds (MLX_REQUEST_TIMEOUT)")
    serve.add_argument("--pid-file", type=Path, help="write the server's pid here, locked while it runs (MLX_PID_FILE)")
    serve.add_argument("--state-dir", type=Path, help="write status.json here (MLX_STATE_DIR)")
    serve.add_argument(
        "--allow-downloads", action="store_true", default=None, help="fetch repo ids missing from the cache (MLX_ALLOW_DOWNLOADS)"
    )
    serve.add_argument(
        "--log-level", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default INFO"
    )
    serve.add_argument("--log-format", choices=LOG_FORMATS, help="text or json, one object per line (MLX_LOG_FORMAT, default text)")
    defaults = attrs.fields(Config)
    status = commands.add_parser("status", help="a running server's URLs, health and models (admin token: MLX_ADMIN_TOKEN)")
    status.add_argument("--url", default=f"http://{defaults.host.default}:{defaults.port.default}", help="its OpenAI API")
    status.add_argument(
        "--admin-url", default=f"http://{defaults.admin_host.default}:{defaults.admin_port.default}", help="its admin API"
    )
    status.add_argument("--json", action="store_true", help="print /admin/status as the server gives it")
    return parser


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "status":
        return report(url=args.url.rstrip("/"), admin_url=args.admin_url.rstrip("/"), as_json=args.json)
    try:
        configure_logging(args.log_level, log_format=args.log_format or os.environ.get("MLX_LOG_FORMAT", "text"))
    except ValueError as exc:
        print(f"mlxtrio: invalid setting: {exc}", file=sys.stderr)
        return 2
    try:
        config = Config.from_environment(
            config_file=args.config,
            host=args.host,
            port=args.port,
            admin_host=args.admin_host,
            admin_port=args.admin_port,
            allowed_hosts=args.allowed_host,
            cors_origins=args.cors_origin,
            model=args.model,
            idle_timeout=args.idle_timeout,
            request_timeout=args.request_timeout,
            pid_file=args.pid_file,
            state_dir=args.state_dir,
            allow_downloads=args.allow_downloads,
        )
        ModelCatalog(config).check_configured()
    except ValueError as exc:
        log.error("invalid setting: %s", exc)
        return 2
    failure: BaseException | None = None
    try:
        status = trio.run(serve_main, config)
    except* (OSError, PidFileHeld) as group:
        # Typically the port or the pid file is taken; say so plainly instead of a traceback.
        failure = _first_leaf(group)
    if failure is not None:
        log.error("cannot serve: %s", failure)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
