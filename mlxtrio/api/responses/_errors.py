"""The Responses API's error bodies: OpenAI's, with the request's own words for what the worker calls the messages."""

from __future__ import annotations

from ..._errors import ServerError
from .._errors import openai_error

__all__ = ["responses_error"]

# The worker names the prompt by a chat's or a completion's field; a Responses request's is its input.
_PROMPT_PARAMS = frozenset({"messages", "prompt"})


def responses_error(error: ServerError) -> dict:
    """``openai_error``; the worker names a chat's ``messages`` (its context overflow, a template's refusal, a
    count past its bound), which a Responses request calls its ``input``."""
    body = openai_error(error)
    if error.param in _PROMPT_PARAMS:
        details = body["error"]
        details["param"] = "input"
        details["message"] = details["message"].replace("the messages", "the input").replace("your messages", "your input")
    return body
