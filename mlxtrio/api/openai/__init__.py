"""The OpenAI API surface: chat completions, completions, embeddings and models.

``_router`` holds the routes, ``_schemas`` the request bodies and their
checks, and the ``_serving`` modules the translation of a request into a
``GenerationRequest`` and of the worker's Deltas into OpenAI's responses
and stream chunks.
"""

from .._errors import openai_error
from .._surface import Surface
from ._router import GENERATION_PATHS, openai_routes

__all__ = ["SURFACE"]

SURFACE = Surface(name="openai", routes=openai_routes, generation_paths=GENERATION_PATHS, error_body=openai_error)
