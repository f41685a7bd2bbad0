"""Ollama's error body: ``{"error": "..."}``, with the status ``api/_errors.py`` maps the kind to."""

from __future__ import annotations

from ..._errors import ServerError

__all__ = ["ollama_error"]


def ollama_error(error: ServerError) -> dict:
    """The body; a field the error names and its message does not is put first, as Ollama's body has no place for it."""
    message = error.message
    if error.param and error.param not in message:
        message = f"{error.param}: {message}"
    return {"error": message}
