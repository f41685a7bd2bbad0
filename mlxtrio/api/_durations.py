"""Durations in request bodies: seconds, or Ollama's Go-style text ("5m", "1h30m", "-1s")."""

from __future__ import annotations

import math
import re

from .._errors import ErrorKind, ServerError

__all__ = ["duration_seconds"]

_DURATION_RE = re.compile(r"(-?)((?:\d+(?:\.\d+)?(?:ms|s|m|h))+)", re.ASCII)
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)", re.ASCII)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(value: float | str | None, *, param: str) -> float | None:
    """``value`` in seconds (None stays None); a 400 naming ``param`` for text that is not a finite duration."""
    if value is None or isinstance(value, float | int):
        return value
    match = _DURATION_RE.fullmatch(value.strip())
    if match is None:
        raise ServerError(ErrorKind.INVALID_REQUEST, f"{param} is seconds or a duration like '5m' or '1h30m', not {value!r}", param=param)
    seconds = sum(float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART_RE.findall(match.group(2)))
    if not math.isfinite(seconds):
        raise ServerError(ErrorKind.INVALID_REQUEST, f"{param} must be a finite duration, not {value[:20]!r}...", param=param)
    return -seconds if match.group(1) else seconds
