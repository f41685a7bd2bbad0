"""Log output of ``mlxtrio serve``: human lines, or one JSON object per line (MLX_LOG_FORMAT=json).

In JSON, the fields a record carries in ``extra`` (a request's id, model,
tokens and timings; a worker's pid) become keys of their own, for log
pipelines that index them.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

__all__ = ["LOG_FORMATS", "configure_logging"]

LOG_FORMATS = ("text", "json")


def configure_logging(level: str = "INFO", *, log_format: str = "text") -> None:
    if log_format not in LOG_FORMATS:
        raise ValueError(f"the log format is one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
