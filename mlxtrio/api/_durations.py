"""Durations in request bodies: seconds, or Ollama's Go-style text ("5m", "1h30m", "-1s")."""

from __future__ import annotations

import math
import re

from .._errors import ErrorKind, ServerError

__all__ = ["duration_seconds"]

# Go's time.ParseDuration, as Ollama reads keep_alive: a sign, then numbers with units; "0" alone needs none.
_DURATION_RE = re.compile(r"([-+]?)((?:[0-9]+(?:\.[0-9]+)?(?:ns|us|µs|μs|ms|s|m|h))+|0)")
_DURATION_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# Longer than this is "stay loaded", as a negative duration says: no clock or date need hold a deadline past it.
_FOREVER_PAST = 100 * 365 * 86400.0


def duration_seconds(value: float | str | None, *, param: str) -> float | None:
    """``value`` in seconds (None stays None); a 400 naming ``param`` for text that is not a finite duration."""
    if value is None:
        return None
    if isinstance(value, float | int):
        if not math.isfinite(value):
            raise ServerError(ErrorKind.INVALID_REQUEST, f"{param} must be a finite number of seconds", param=param)
        return _bounded(value)
    match = _DURATION_RE.fullmatch(value.strip())
    if match is None:
        raise ServerError(ErrorKind.INVALID_REQUEST, f"{param} is seconds or a duration like '5m' or '1h30m', not {value!r}", param=param)
    seconds = sum(float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART_RE.findall(match.group(2)))
    if not math.isfinite(seconds):
        raise ServerError(ErrorKind.INVALID_REQUEST, f"{param} must be a finite duration, not {value[:20]!r}...", param=param)
    return _bounded(-seconds if match.group(1) == "-" else seconds)


def _bounded(seconds: float) -> float:
    return -1.0 if seconds > _FOREVER_PAST else seconds
